"""Model registry: ``create(name, **kwargs)`` builds any registered model (timm-style thin builders)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from . import densenet, resnet, vgg
from .mlp import MLP

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name; registering a model also tests it."""
    _REGISTRY[fn.__name__] = fn
    return fn


def names() -> list[str]:
    """Names of all registered models."""
    return sorted(_REGISTRY)


def arguments(name: str) -> set[str]:
    """The keyword arguments the builder of a registered model takes."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(names())}")
    return set(inspect.signature(_REGISTRY[name]).parameters)


def create(name: str, **kwargs) -> nn.Module:
    """Build a registered model, e.g. ``create("vgg19", num_classes=100)``.

    Every builder accepts ``num_classes``, ``widths`` (a narrower width config gives the same
    class, pruned) and, where it makes sense, ``in_channels`` and ``input_size``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(names())}")
    builder = _REGISTRY[name]
    accepted = arguments(name)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"model {name!r} does not take {', '.join(unknown)}; it takes {', '.join(sorted(accepted))}")
    return builder(**kwargs)


@register
def vgg11(num_classes=10, widths=None, in_channels=3, input_size=32) -> vgg.VGG:
    return vgg.vgg("vgg11", num_classes, widths, in_channels, input_size)


@register
def vgg13(num_classes=10, widths=None, in_channels=3, input_size=32) -> vgg.VGG:
    return vgg.vgg("vgg13", num_classes, widths, in_channels, input_size)


@register
def vgg16(num_classes=10, widths=None, in_channels=3, input_size=32) -> vgg.VGG:
    return vgg.vgg("vgg16", num_classes, widths, in_channels, input_size)


@register
def vgg19(num_classes=10, widths=None, in_channels=3, input_size=32) -> vgg.VGG:
    """The paper's VGGNet for CIFAR/SVHN (20.04M parameters at 10 classes)."""
    return vgg.vgg("vgg19", num_classes, widths, in_channels, input_size)


@register
def vgg11a(num_classes=1000, widths=None, in_channels=3, input_size=224) -> vgg.VGGA:
    """VGG-A with BN for ImageNet (paper Table 2)."""
    return vgg.vgg11a(num_classes, widths, in_channels, input_size)


@register
def resnet164(num_classes=10, widths=None, in_channels=3, input_size=32) -> resnet.PreActResNet:
    """Pre-activation bottleneck ResNet-164 (paper Table 1)."""
    return resnet.PreActResNet(164, num_classes, widths, in_channels, input_size)


@register
def preresnet20(num_classes=10, widths=None, in_channels=3, input_size=32) -> resnet.PreActResNet:
    """A 20-layer pre-activation bottleneck ResNet: ResNet-164's design, small enough for CPU tests."""
    return resnet.PreActResNet(20, num_classes, widths, in_channels, input_size)


@register
def densenet40(num_classes=10, widths=None, in_channels=3, input_size=32) -> densenet.DenseNet:
    """DenseNet-40, growth rate 12 (paper Table 1)."""
    return densenet.DenseNet(40, 12, num_classes, widths, in_channels, input_size)


@register
def mlp(num_classes=10, widths=(500, 300), input_size=(1, 28, 28)) -> MLP:
    """784-500-300-10 MLP with BatchNorm1d (paper Table 3)."""
    return MLP(widths, num_classes, input_size)


from .sources import after_narrowing, create_model, is_factory_path, rebuildable  # noqa: E402, F401  (sources builds on the registry)

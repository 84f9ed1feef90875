"""The registered models: ``create(name, **kwargs)`` builds any of them (the registry: registry.py)."""

from __future__ import annotations

from . import densenet, resnet, vgg
from .mlp import MLP
from .registry import arguments, create, names, register  # noqa: F401  (netslim.models.create, ...)
from .sources import after_narrowing, create_model, is_factory_path, rebuildable  # noqa: F401


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


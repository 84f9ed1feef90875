"""A model's architecture as data: the ``arch`` entry of a checkpoint, which rebuilds it without pickled code.

``describe`` gives a registered, zoo or factory name with its keyword arguments, the input size and the shape
of every conv, Linear and BN, so a pruned model is rebuilt without the plan that made it
(:func:`netslim.checkpoint.build_model`). Both netslim's own checkpoints and other tools' (:mod:`netslim.foreign`)
are described this way.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from .layers import selection_of


def layer_shapes(model: nn.Module) -> dict[str, list]:
    """Shape of every conv, Linear and BN: ``[in, out, has_bias, is_selection]`` by module path."""
    shapes = {}
    for path, m in model.named_modules():
        if isinstance(m, _BatchNorm) and selection_of(m) is not None:
            shapes[path] = [m.in_channels, m.num_features, m.affine, True]
        elif isinstance(m, _BatchNorm):
            shapes[path] = [m.num_features, m.num_features, m.affine, False]
        elif isinstance(m, _ConvNd):
            shapes[path] = [m.in_channels, m.out_channels, m.bias is not None, False]
        elif isinstance(m, nn.Linear):
            shapes[path] = [m.in_features, m.out_features, m.bias is not None, False]
    return shapes


def describe(model: nn.Module, name: str, kwargs: Mapping | None = None) -> dict:
    """The ``arch`` entry of a checkpoint: how to rebuild ``model`` (built by ``name(**kwargs)``)."""
    arch = {"name": name, "kwargs": dict(kwargs or {}), "shapes": layer_shapes(model)}
    size = getattr(model, "input_size", None)
    if size is not None:  # a factory's model may not rebuild with it: keep what was learned about it
        arch["input_size"] = [int(s) for s in (size if isinstance(size, list | tuple) else [size])]
    return arch


def restore_input_size(model: nn.Module, arch: Mapping) -> nn.Module:
    """Give ``model`` the input size its description records, when the builder did not set one."""
    size = arch.get("input_size")
    if getattr(model, "input_size", None) is None and isinstance(size, list | tuple) and size \
            and all(isinstance(s, int) and 0 < s < 1 << 16 for s in size):
        model.input_size = tuple(size)
    return model


def layer_shapes_of(module: nn.Module) -> list:
    return next(iter(layer_shapes(module).values()), [])

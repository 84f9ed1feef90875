"""The registry of model builders: ``create(name, **kwargs)`` builds any registered model (timm-style thin builders).

The builders register themselves in ``netslim/models/__init__.py``; :mod:`netslim.models.sources` builds on this
registry (zoo names, factory paths), so it sits below both.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

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

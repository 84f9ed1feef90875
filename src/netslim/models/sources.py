"""Where a model comes from: a registered name, a model zoo, or a factory the user names.

``create_model(name, kwargs)`` builds what the *user* asked for, so a ``package.module:function``
path is imported and called. A checkpoint file is not the user: :func:`rebuildable` decides what a
name read from a file may build (registered models and zoo names only), so loading a file never runs
code chosen by whoever wrote it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from torch import nn

from .registry import create, names

ZOO_SOURCES = ("torchvision", "timm", "ultralytics")

# Builder arguments that make a zoo fetch or unpickle something; a file may not set them.
_UNSAFE_ZOO_KWARGS = {"pretrained", "weights", "weights_backbone", "checkpoint_path", "pretrained_cfg",
                      "pretrained_cfg_overlay", "cache_dir"}


def is_factory_path(name: str) -> bool:
    """Whether ``name`` is a ``package.module:function`` path (code to import), not a registered or zoo name."""
    return ":" in name and name.partition(":")[0] not in ZOO_SOURCES


def create_model(name: str, kwargs: Mapping | None = None) -> nn.Module:
    """A model by name: registered (``vgg19``), ``torchvision:NAME``, ``timm:NAME``, ``ultralytics:yolov8n.yaml``
    (an Ultralytics model config, unmodified) or ``package.module:factory``.

    ``kwargs`` go to the builder; ``pretrained=True`` asks torchvision/timm for their released weights
    (their ordinary download path, into their own caches). Only call this with a name the user gave.
    """
    kwargs = dict(kwargs or {})
    if ":" not in name:
        return create(name, **kwargs)
    source, _, attr = name.partition(":")
    if source in ZOO_SOURCES:
        return _zoo_model(source, attr, kwargs)
    if not source or not attr.isidentifier():
        raise ValueError(f"model factory {name!r} is not of the form 'package.module:function'")
    try:
        module = importlib.import_module(source)
    except ModuleNotFoundError as e:
        if e.name is not None and source.split(".")[0] == e.name.split(".")[0]:  # the factory's own package
            raise ValueError(f"cannot import {source!r} for model factory {name!r} ({e}): Python looks in the "
                             f"working directory ({Path.cwd()}) and the installed packages; run netslim from the "
                             f"folder that holds {e.name.split('.')[0]}/, or add that folder to PYTHONPATH") from None
        raise ValueError(f"importing {source!r} for model factory {name!r} failed: {e} (a package that your "
                         "module imports is not installed)") from None
    except ImportError as e:
        raise ValueError(f"cannot import module {source!r} of model factory {name!r}: {e}") from None
    except Exception as e:  # importing runs the module's own code; any failure is the user's
        raise ValueError(f"importing {source!r} for model factory {name!r} failed: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"module {source!r} has no function {attr!r} (model factory {name!r})")
    return _checked(_call_factory(factory, kwargs, name), name)


def _call_factory(factory: Callable[..., nn.Module], kwargs: dict, name: str) -> nn.Module:
    """Call a user's factory: whatever it raises (sys.exit included) is one error naming it, not a crash."""
    try:
        return factory(**kwargs)
    except (Exception, SystemExit) as e:
        what = f"called sys.exit({e.code!r})" if isinstance(e, SystemExit) else \
            f"raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise ValueError(f"model factory {name!r} {what}") from None


def rebuildable(name: str, kwargs: Mapping, factory: str | Callable[..., nn.Module] | None,
                origin: str) -> Callable[[], nn.Module]:
    """How to rebuild a model described in a file (``origin``) without running code the file chose.

    Registered names and zoo names rebuild (zoo arguments that would fetch or unpickle are refused).
    A factory path runs only when the caller names the same path in ``factory`` (the command line's
    ``--factory``), or passes the factory function itself.
    """
    kwargs = dict(kwargs)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{origin} does not name its architecture")
    if callable(factory):
        return lambda: _checked(_call_factory(factory, kwargs, getattr(factory, "__name__", "factory")),
                                getattr(factory, "__name__", "factory"))
    if is_factory_path(name):
        if factory is None:
            raise ValueError(f"{origin} was built by the model factory {name!r}; netslim runs a factory named in a "
                             f"file only when you name it yourself: add --factory {name} if you trust that code")
        if factory != name:
            raise ValueError(f"{origin} was built by the model factory {name!r}, not {factory!r} (--factory): "
                             f"name the factory that built it")
        return lambda: create_model(name, kwargs)
    if ":" in name:
        source, _, attr = name.partition(":")
        if any(c in attr for c in ":/\\") or attr.startswith(".") or (source == "ultralytics" and
                                                                     not attr.endswith((".yaml", ".yml"))):
            raise ValueError(f"{origin} names {name!r}: a {source} model is rebuilt from a file only by its plain "
                             "name (no hub, path or URL)")
        unsafe = sorted(set(kwargs) & _UNSAFE_ZOO_KWARGS)
        if unsafe:
            raise ValueError(f"{origin} asks {source} for {', '.join(unsafe)}: weights come from the file itself, "
                             "so netslim refuses builder arguments that fetch or load others")
        if source == "ultralytics" and factory != name:
            # Ultralytics looks for a config in the working directory first and evaluates strings in it
            # (``activation:``): a name read from a file may only mean a config Ultralytics ships.
            shipped = packaged_ultralytics_config(attr, origin)
            return lambda: _ultralytics_model(shipped, kwargs)
    elif name not in names():
        raise ValueError(f"{origin} names model {name!r}, which is not registered; choose one of: {', '.join(names())}")
    return lambda: create_model(name, kwargs)


_CONFIG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.ya?ml")


def packaged_ultralytics_config(config: str, origin: str) -> str:
    """The path inside the installed Ultralytics package of the model config ``config`` (``yolov8n.yaml``),
    for a name read from a file (``origin``): never a file of the working directory, never a pattern.

    Ultralytics ships one config per family (``yolov8.yaml``) and reads the scale from the name it is given
    (``yolov8n.yaml``); the path returned keeps that name, in the folder of the shipped family config.
    """
    if not _CONFIG_NAME.fullmatch(config):
        raise ValueError(f"{origin} names the Ultralytics config {config!r}: a config named in a file must be a "
                         "plain file name (letters, digits, '_', '-', '.'), without patterns or folders")
    try:
        import ultralytics
    except ImportError:
        raise ImportError(f"ultralytics:{config} needs ultralytics: pip install ultralytics "
                          "(an optional extra of netslim)") from None
    shipped = {path.name: path.parent for path in (Path(ultralytics.__file__).parent / "cfg" / "models").rglob("*")
               if path.suffix in (".yaml", ".yml") and path.is_file()}
    stem, suffix = config.rsplit(".", 1)
    family = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", stem) + "." + suffix  # yolov8n -> yolov8, as Ultralytics does
    folder = shipped.get(config) or shipped.get(family)
    if folder is None:
        raise ValueError(f"{origin} names the Ultralytics config {config!r}, which Ultralytics does not ship; netslim "
                         f"reads a config named in a file only from the Ultralytics package: if you trust your own "
                         f"{config}, name it for this load (--factory ultralytics:{config})")
    return str(folder / config)


def _checked(model, name: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model factory {name!r} returned {type(model).__name__}, not an nn.Module")
    return model


def _zoo_model(source: str, name: str, kwargs: dict) -> nn.Module:
    if source == "ultralytics":
        return _ultralytics_model(name, kwargs)
    pretrained = bool(kwargs.pop("pretrained", False))
    kwargs.pop("input_size", None)
    kwargs.pop("in_channels", None)
    try:
        library = importlib.import_module(source)
    except ImportError:
        raise ImportError(f"{source}:{name} needs {source}: pip install {source} "
                          "(an optional extra of netslim)") from None
    try:
        if source == "timm":
            model = library.create_model(name, pretrained=pretrained, **kwargs)
        else:
            model = library.models.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{source} cannot build {name!r}: {str(e).splitlines()[0]}") from None
    model.input_size = (3, 224, 224)
    return model


def _ultralytics_model(config: str, kwargs: dict) -> nn.Module:
    """An Ultralytics model built from its yaml config (``yolov8n.yaml``, ``yolo11n-seg.yaml``), random weights."""
    kwargs = dict(kwargs)  # a rebuild calls this twice (on the meta device first) with the same arguments
    if kwargs.pop("pretrained", False):
        raise ValueError("ultralytics: models are built from their yaml config; for trained weights load the .pt "
                         "with --trust-pickle (it is a pickle)")
    channels = int(kwargs.pop("in_channels", kwargs.pop("ch", 3)))
    side = kwargs.pop("input_size", 640)
    num_classes = kwargs.pop("num_classes", None)
    nc = kwargs.pop("nc", num_classes)
    try:
        from ultralytics.nn import tasks
    except ImportError:
        raise ImportError("ultralytics:NAME needs ultralytics: pip install ultralytics "
                          "(an optional extra of netslim)") from None
    if kwargs:
        raise ValueError(f"ultralytics:{config} takes nc, ch and input_size, not {', '.join(sorted(kwargs))}")
    builders = {"detect": tasks.DetectionModel, "segment": tasks.SegmentationModel, "pose": tasks.PoseModel,
                "obb": tasks.OBBModel, "classify": tasks.ClassificationModel}
    try:
        task = tasks.guess_model_task(tasks.yaml_model_load(config))
        model = builders[task](config, ch=channels, nc=nc, verbose=False)
    except (FileNotFoundError, KeyError, ValueError, TypeError, AttributeError, SyntaxError) as e:
        raise ValueError(f"ultralytics cannot build {config!r}: {str(e).splitlines()[0] if str(e) else e!r}") from None
    model.input_size = (channels, side, side) if isinstance(side, int) else tuple(side)
    return model


def after_narrowing(model: nn.Module) -> None:
    """Keep width attributes that third-party blocks read in step with their narrowed layers.

    Ultralytics' exporter swaps C2f-style blocks to ``forward_split``, which splits ``cv1``'s output at
    ``self.c`` (written at construction) where ``forward`` chunks it in halves; the analysis keeps the
    halves equal, so ``c`` becomes half of ``cv1``'s new width.
    """
    for module in model.modules():
        cv1 = getattr(getattr(module, "cv1", None), "conv", None)
        if hasattr(module, "forward_split") and isinstance(getattr(module, "c", None), int) \
                and isinstance(cv1, nn.Conv2d):
            module.c = cv1.out_channels // 2

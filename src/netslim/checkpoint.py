"""Self-describing, crash-safe checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and primitives (nanoGPT style):
``{"format", "arch", "state_dict", ...training state...}``. ``arch`` rebuilds the model without
pickled code: a registered model name (or a zoo name, or a ``module:factory`` path) with its keyword
arguments, plus the shape of every conv/Linear/BN, so a pruned model loads without the plan that made it.
Nothing named in a file is executed: a factory path is rebuilt only when the caller names it too
(:func:`netslim.models.rebuildable`).
"""

from __future__ import annotations

import errno
import os
import pickle
import pickletools
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import limits, models
from .architecture import describe, layer_shapes, layer_shapes_of, restore_input_size  # noqa: F401  (as before)
from .foreign import load_foreign_model
from .layers import narrowed, with_selection
from .runfolder import DiskFull, writing

FORMAT = "netslim-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit: the message says which file and why."""


class PickledCheckpoint(CheckpointError):
    """The file holds pickled objects: loading it would run code from it (see :mod:`netslim.foreign`)."""


# -- rebuilding a model from its description (architecture.py describes it) --

Factory = str | Callable[..., nn.Module] | None


def build_model(arch: Mapping, factory: Factory = None, origin: str = "the checkpoint", *,
                weights: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Rebuild a (possibly pruned) model from its ``arch`` description, with untrained weights.

    ``factory``: when the architecture was built by a ``package.module:function`` factory, that same
    path (or the function itself); a factory named only in the file is never imported or called.
    ``weights``: the weights the model is rebuilt for. What the description asks for is bounded
    (:mod:`netslim.limits`): the model is built on the meta device first (no memory), its size checked
    and, narrowed as described, its shapes compared with ``weights`` before the real one is built.
    """
    kwargs, shapes = arch.get("kwargs", {}), arch.get("shapes", {})
    if not isinstance(kwargs, Mapping) or not isinstance(shapes, Mapping) or not all(
            isinstance(s, list | tuple) and len(s) == 4 and all(isinstance(v, int) for v in s)
            for s in shapes.values()):
        raise CheckpointError(f"{origin} has a malformed architecture description (arch.kwargs / arch.shapes)")
    kwargs = {k: v for k, v in kwargs.items() if k != "pretrained"}  # weights come from the file
    try:
        limits.check_arguments(kwargs, origin)
        builder = models.rebuildable(arch.get("name"), kwargs, factory, origin)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    _import_library_of(arch.get("name"))
    try:
        with torch.device("meta"):
            sized = builder()
    except Exception as e:  # noqa: BLE001  it needs real tensors (Ultralytics runs a forward pass), or fails below
        if not limits.small_arguments(kwargs):
            raise CheckpointError(f"{origin}: {arch['name']} cannot be sized before it is built ({_first_line(e)}) "
                                  "and its arguments are too large to build it unsized: refused") from None
        sized = None
    if sized is not None:
        with torch.device("meta"):
            sized = _narrowed_as(sized, arch["name"], shapes, origin)
        if weights is not None:
            _checked(limits.check_fits, sized, weights, origin, arch["name"])
    try:
        model = builder()
    except Exception as e:  # noqa: BLE001  the file's arguments do not fit the builder, whatever it raises
        raise CheckpointError(f"{origin}: cannot rebuild {arch['name']!r} from its arguments: "
                              f"{_first_line(e)}") from None
    return _narrowed_as(model, arch["name"], shapes, origin)


def _import_library_of(name: str) -> None:
    """Import the library a model comes from before anything is built on the meta device: a library's
    first import there would make its module-level tensors meta tensors for the whole process (Ultralytics'
    ``Detect.anchors``: "Cannot copy out of meta tensor" on the real model). Only for names
    ``models.rebuildable`` accepted; a library that is missing is said by the builder itself."""
    import importlib

    source = name.partition(":")[0] if isinstance(name, str) and ":" in name else None
    if source is None:
        return
    module = {"ultralytics": "ultralytics.nn.tasks"}.get(source, source)
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001  the builder raises the error that says what to install or fix
        return


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _checked(check: Callable, *args) -> None:
    """Run one of :mod:`netslim.limits`' checks, its refusal a :class:`CheckpointError`."""
    try:
        check(*args)
    except limits.FileLimitError as e:
        raise CheckpointError(str(e)) from None


def _narrowed_as(model: nn.Module, name: str, shapes: Mapping, origin: str) -> nn.Module:
    """``model`` (at most ``limits.MAX_MODEL_ELEMENTS``) with its layers narrowed to ``shapes``."""
    _checked(limits.check_model_size, model, origin)
    for path, (n_in, n_out, bias, select) in shapes.items():
        if min(n_in, n_out) < 1:
            raise CheckpointError(f"{origin} describes layer '{path}' with {n_in} -> {n_out} channels")
        try:
            old = model.get_submodule(path)
        except AttributeError:
            raise CheckpointError(f"{origin} describes layer '{path}' that {name} does not have") from None
        current = layer_shapes_of(old)
        if not current:
            raise CheckpointError(f"{origin}: layer '{path}' is a conv/Linear/BN, but in {name} it is a "
                                  f"{type(old).__name__}: the checkpoint belongs to another architecture")
        if current == [n_in, n_out, bias, select]:
            continue
        if n_in > current[0] or n_out > current[1]:
            raise CheckpointError(f"{origin} describes layer '{path}' as {n_in} -> {n_out} channels, wider than "
                                  f"{name} builds it ({current[0]} -> {current[1]})")
        # the kept positions on the host, also while the model is sized on the meta device
        ins, outs = torch.arange(n_in, device="cpu"), torch.arange(n_out, device="cpu")
        try:
            if isinstance(old, _BatchNorm):
                new = narrowed(old, outs, outs)
                new = with_selection(new, outs, n_in) if select else new
            else:
                new = narrowed(old, ins, outs, bias=bool(bias))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{origin}: layer '{path}' cannot take the shape it describes: {e}") from None
        model.set_submodule(path, new)
    models.after_narrowing(model)
    return model


# -- files --

def save_checkpoint(path: str | Path, payload: Mapping) -> None:
    """Write atomically (:func:`netslim.runfolder.writing`): a temporary file in the same folder, fsynced, then
    renamed over ``path``; never through a link or over a device, never into a run folder another process holds.

    A crash at any moment leaves either the previous checkpoint or the new one, never a partial one.
    A full disk or an unwritable folder raises :class:`CheckpointError` and keeps the previous file.
    """
    path = Path(path)
    try:
        with writing(path) as (fd, _):
            writer = _Writer(fd)
            try:
                torch.save({"format": FORMAT, **payload}, writer)
            except RuntimeError as e:  # torch's zip writer reports a failed write as RuntimeError (inline_container)
                raise writer.error or OSError(errno.EIO, str(e).splitlines()[0] if str(e) else "write failed") \
                    from None
    except OSError as e:
        if isinstance(e, DiskFull) or e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(f"cannot write checkpoint {path}: the disk is full; the previous checkpoint is "
                                  "kept") from None
        raise CheckpointError(e.strerror if e.strerror and str(path) in e.strerror else
                              f"cannot write checkpoint {path}: {e.strerror or e}; the previous checkpoint is kept") \
            from None


class _Writer:
    """A file for ``torch.save`` that writes every byte to ``fd`` or raises the OSError (ENOSPC included) it met."""

    def __init__(self, fd: int) -> None:
        self.fd, self.error = fd, None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as e:
            self.error = e
            raise
        return size

    def flush(self) -> None:
        pass


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``): never executes code from the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    kind = _file_kind(path)
    if kind == "pickle":  # torch.save's legacy format, or a plain pickle: its data cannot be checked before use
        raise PickledCheckpoint(f"refusing to load {path}: it is a plain pickle (or PyTorch's legacy format), not "
                                "the zip format netslim writes; pass --trust-pickle (trust_pickle=True) only if you "
                                "trust the file")
    if kind != "zip":
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({kind}); netslim saves its own with "
                              "`netslim train` or `netslim prune`")
    _checked(limits.check_archive, path)
    try:
        # mmap: tensors are read from the file when used, after their shapes were checked (limits.check_fits)
        data = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e) and "Unsupported operand" not in str(e):
            raise PickledCheckpoint(f"refusing to load {path}: it holds pickled code or objects, not just tensors "
                                    "(an Ultralytics or other trainer's checkpoint?): pass --trust-pickle "
                                    "(trust_pickle=True) only if you trust the file") from None
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, RecursionError, MemoryError) as e:
        why = str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt): {why}") from None
    _checked(limits.check_tensors, data, str(path))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a netslim checkpoint (no '{FORMAT}' header); netslim saves "
                              "its own with `netslim train`")
    weights = data.get("state_dict", {})
    if not isinstance(weights, Mapping) or not all(isinstance(k, str) and torch.is_tensor(v)
                                                    for k, v in weights.items()):
        raise CheckpointError(f"{path} has a malformed state_dict (it must map parameter names to tensors)")
    return data


def _file_kind(path: Path) -> str:
    """``zip`` (torch.save's format), ``pickle`` (its legacy format), or what else the file looks like."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04") or zipfile.is_zipfile(path):  # a zip, maybe truncated
        return "zip"
    if head[:1] == b"\x80" and head[1:2] and 2 <= head[1] <= 5:
        return "pickle" if _parses_as_pickle(path) else "a truncated or corrupt pickle"
    if not head:
        return "an empty file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown binary data"
    return f"a text file starting {text.splitlines()[0][:30]!r}" if text.strip() else "a text file"


def _parses_as_pickle(path: Path) -> bool:
    """Whether the file starts with one whole pickle: its opcodes read, none of them run (pickletools)."""
    try:
        with open(path, "rb") as f:
            for _ in pickletools.genops(f):
                pass
    except (ValueError, EOFError, OverflowError, UnicodeDecodeError, OSError):
        return False
    return True


def load_model(path: str | Path, map_location: str | torch.device = "cpu",
               factory: Factory = None, trust_pickle: bool = False) -> tuple[nn.Module, dict]:
    """The model stored in a checkpoint, with its weights, and the checkpoint dict itself.

    ``factory``: see :func:`build_model` (needed only for models built by a user's factory).
    ``trust_pickle``: also accept another tool's pickled checkpoint (an Ultralytics ``.pt``, a pickled
    module), which runs code from the file: see :func:`netslim.foreign.load_foreign_model`.
    """
    try:
        data = load_checkpoint(path, map_location)
    except PickledCheckpoint:
        if not trust_pickle:
            raise
        return load_foreign_model(path, map_location, trust_pickle=True)
    if not isinstance(data.get("arch"), Mapping):
        raise CheckpointError(f"{path} does not describe its architecture (no 'arch' entry)")
    weights = data["state_dict"]
    model = restore_input_size(build_model(data["arch"], factory, origin=str(path), weights=weights), data["arch"])
    _checked(limits.check_fits, model, weights, str(path), data["arch"]["name"])
    check_finite(weights, path)
    model.load_state_dict(weights)
    return model.to(map_location), data


def check_finite(state_dict: Mapping[str, torch.Tensor], path: str | Path) -> None:
    for key, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: weight '{key}' contains NaN or Inf; use an earlier checkpoint")

"""What a file may ask netslim for: bounds checked before memory or time is spent on what it says.

A checkpoint is data written by someone else. Loading it with ``weights_only=True`` runs no code, but
the data can still ask for unbounded resources: a builder argument ``widths=[10**9]`` (a model of
terabytes), a 300,000-entry width list (minutes of module construction), a tensor stored deflated
(1 GB from a 1 MB file) or as a zero-stride view (``zeros(1).expand(100000, 100000)``: 40 GB the
first time it is copied). The rules here make what netslim allocates for a file proportional to the
file itself:

- the archive: every entry stored, never compressed (``torch.save`` never compresses), entries not
  overlapping (their sizes add up to at most the file's), and a small pickle (names and shapes only);
- every tensor owns the bytes it claims (no zero-stride view larger than its storage);
- builder arguments: a bounded number of plain values, ints below 2**31;
- the model those arguments build is first built on the meta device (no memory): at most
  ``MAX_MODEL_ELEMENTS`` parameters, and, narrowed as the file describes it, exactly the shapes of the
  weights the file holds. A builder that cannot build on the meta device (Ultralytics runs a forward
  pass while building) gets only small arguments (ints up to ``SMALL_INT``, short lists).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

MAX_PICKLE_BYTES = 8 << 20  # a netslim checkpoint's pickle holds names, shapes and plans: ~100 KB for ResNet-50
MAX_ARGUMENT_VALUES = 8192  # PreActResNet-1001's width list has ~1000 entries
MAX_ARGUMENT_DEPTH = 6
MAX_INT = 1 << 31
SMALL_INT = 1 << 16
SMALL_LIST = 64
MAX_MODEL_ELEMENTS = 1 << 30  # 4 GiB of fp32 parameters; the largest timm CNNs hold under 0.9e9


class FileLimitError(ValueError):
    """A file asks for more than netslim gives any file: the message names the file and what it asks."""


def check_archive(path: str | Path) -> None:
    """The zip directory of a ``torch.save`` file, read before any of its data: stored entries only, sizes
    adding up to at most the file's size, a pickle of at most ``MAX_PICKLE_BYTES``."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise FileLimitError(f"{path} is not a readable checkpoint (truncated or corrupt): {e}") from None
    compressed = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise FileLimitError(f"{path} stores {compressed[0]!r} compressed: torch.save never compresses, and netslim "
                             "does not inflate data from a file (its size in memory is not bounded by the file's)")
    if sum(e.file_size for e in entries) > os.path.getsize(path):
        raise FileLimitError(f"{path} declares more data than the file holds (overlapping entries): refused")
    pickle_size = max((e.file_size for e in entries if e.filename.endswith("data.pkl")), default=0)
    if pickle_size > MAX_PICKLE_BYTES:
        raise FileLimitError(f"{path} has a {pickle_size >> 20} MiB pickle; a checkpoint's pickle holds names and "
                             f"shapes (at most {MAX_PICKLE_BYTES >> 20} MiB): refused")


def check_tensors(data: object, origin: str) -> None:
    """Every tensor in ``data`` (nested dicts, lists, tuples) owns the bytes it claims: a view larger than
    its storage (a zero-stride ``expand``) would be materialized at its full size by the first copy."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif torch.is_tensor(item):
            claimed = item.numel() * item.element_size()
            held = item.untyped_storage().nbytes() - item.storage_offset() * item.element_size()
            if claimed > held:
                raise FileLimitError(f"{origin} holds a {'x'.join(map(str, item.shape))} tensor backed by "
                                     f"{max(held, 0)} bytes (a broadcast view): refused")


def check_arguments(kwargs: Mapping, origin: str) -> None:
    """Builder arguments from a file: plain values (numbers, strings, lists, dicts), at most
    ``MAX_ARGUMENT_VALUES`` of them, nested at most ``MAX_ARGUMENT_DEPTH`` deep, ints below ``MAX_INT``."""
    count = 0
    stack = [(kwargs, 0)]
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > MAX_ARGUMENT_VALUES or depth > MAX_ARGUMENT_DEPTH:
            raise FileLimitError(f"{origin} gives its model builder more than {MAX_ARGUMENT_VALUES} values or "
                                 f"values nested over {MAX_ARGUMENT_DEPTH} deep: refused")
        if isinstance(item, Mapping):
            if not all(isinstance(k, str) for k in item):
                raise FileLimitError(f"{origin} gives its model builder a mapping with non-text keys")
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if abs(item) >= MAX_INT:
                raise FileLimitError(f"{origin} gives its model builder the value {item}: refused (at most {MAX_INT})")
        elif isinstance(item, float | str):
            if isinstance(item, str) and len(item) > 4096:
                raise FileLimitError(f"{origin} gives its model builder a text of {len(item)} characters: refused")
        else:
            raise FileLimitError(f"{origin} gives its model builder a {type(item).__name__}; only plain values "
                                 "(numbers, text, lists, mappings) are read from a file")


def small_arguments(kwargs: Mapping) -> bool:
    """Whether every int in ``kwargs`` is at most ``SMALL_INT`` and every list at most ``SMALL_LIST`` long:
    what a builder that cannot be sized on the meta device may take from a file."""
    stack = list(kwargs.values())
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            item = list(item.values())
        if isinstance(item, list | tuple):
            if len(item) > SMALL_LIST:
                return False
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > SMALL_INT:
            return False
    return True


def check_model_size(model: nn.Module, origin: str) -> None:
    """At most ``MAX_MODEL_ELEMENTS`` parameters and buffers (counted on the meta device, for free)."""
    elements = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
    if elements > MAX_MODEL_ELEMENTS:
        raise FileLimitError(f"{origin} describes a model of {elements:.3g} parameters (over "
                             f"{MAX_MODEL_ELEMENTS:.3g}): refused")


def check_fits(model: nn.Module, weights: Mapping[str, torch.Tensor], origin: str, name: str) -> None:
    """The file's weights have exactly the names and shapes of ``model`` (built on the meta device), checked
    on their shapes alone, before any of their data is read."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong = [k for k, v in expected.items() if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        what = (f"'{wrong[0]}' is {tuple(weights[wrong[0]].shape)} in the file, {tuple(expected[wrong[0]].shape)} "
                f"in the model" if wrong else f"'{missing[0]}' is missing" if missing
                else f"'{unexpected[0]}' is not in the model")
        count = len(missing) + len(unexpected) + len(wrong)
        raise FileLimitError(f"{origin}: weights do not fit architecture {name}: {what}"
                             f"{f' (and {count - 1} more)' if count > 1 else ''}")

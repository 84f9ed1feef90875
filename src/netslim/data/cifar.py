"""CIFAR-10 and CIFAR-100 from the official python pickle batches, read with a numpy-only unpickler."""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import Dataset, DatasetError
from .download import check_md5, extract_tar, fetch_url, search_dirs, target_dir, where

# Everything a CIFAR batch (numpy arrays, dicts, lists, bytes) needs; any other global is refused.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles builtins and numpy arrays only: no arbitrary code runs on a hostile file."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return getattr(importlib.import_module(module), name)


def safe_unpickle(path: Path) -> Any:
    """Load a pickle that may hold only builtins and numpy arrays (py2 strings stay ``bytes``)."""
    try:
        with open(path, "rb") as f:
            return _NumpyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any failure of an untrusted file is a corrupt file
        raise DatasetError(f"{path}: unreadable pickle ({type(e).__name__}: {e}): delete it and download again") \
            from e


@dataclass(frozen=True)
class _Spec:
    name: str
    title: str
    folder: str
    files: dict[str, tuple[str, ...]]
    label_key: bytes
    num_classes: int
    url: str
    md5: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: tuple[str, bytes]  # (file, key) of the class names


CIFAR10 = _Spec(
    "cifar10", "CIFAR-10", "cifar-10-batches-py",
    {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    b"labels", 10, "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), ("batches.meta", b"label_names"))
CIFAR100 = _Spec(
    "cifar100", "CIFAR-100", "cifar-100-python", {"train": ("train",), "test": ("test",)},
    b"fine_labels", 100, "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85",
    (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), ("meta", b"fine_label_names"))


def _read_batch(path: Path, spec: _Spec) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or spec.label_key not in batch:
        raise DatasetError(f"{path}: not a {spec.title} batch (need a dict with b'data' and {spec.label_key!r})")
    data, labels = batch[b"data"], np.asarray(batch[spec.label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{path}: b'data' must be uint8 (N, 3072), got {getattr(data, 'dtype', type(data))} "
                           f"{getattr(data, 'shape', '')}")
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        raise DatasetError(f"{path}: {spec.label_key!r} must hold {data.shape[0]} integer labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DatasetError(f"{path}: labels outside [0, {spec.num_classes})")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _class_names(folder: Path, spec: _Spec) -> tuple[str, ...]:
    path = folder / spec.meta[0]
    if not path.is_file():
        return ()
    meta = safe_unpickle(path)
    names = meta.get(spec.meta[1], []) if isinstance(meta, dict) else []
    if len(names) != spec.num_classes:
        return ()
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _find(spec: _Spec, data_dir: str | Path | None, split: str, download_ok: bool) -> Path:
    dirs = search_dirs(spec.name, data_dir)
    for d in dirs:
        if all((d / spec.folder / f).is_file() for f in spec.files[split]):
            return d / spec.folder
    dest = target_dir(spec.name, data_dir)
    archive = dest / Path(spec.url).name
    if archive.is_file():  # downloaded or put there by hand, not yet extracted
        check_md5(archive, spec.md5)
    elif not download_ok:
        raise DatasetError(f"{spec.title} not found in {where(dirs)}: put {spec.folder}/ in {dest} "
                           f"or allow download ({spec.url})")
    else:
        fetch_url(spec.url, archive, spec.md5, spec.title)
    folder = extract_tar(archive, spec.folder, dest)
    archive.unlink(missing_ok=True)
    missing = [f for f in spec.files[split] if not (folder / f).is_file()]
    if missing:
        raise DatasetError(f"{folder}: missing {', '.join(missing)}: delete the folder and download again")
    return folder


def _load(spec: _Spec, data_dir: str | Path | None, split: str, download: bool) -> Dataset:
    if split not in spec.files:
        raise ValueError(f"{spec.title} split must be one of {sorted(spec.files)}, got {split!r}")
    folder = _find(spec, data_dir, split, download)
    parts = [_read_batch(folder / f, spec) for f in spec.files[split]]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return Dataset(images, labels, spec.num_classes, spec.mean, spec.std, spec.name, _class_names(folder, spec))


def load_cifar10(data_dir: str | Path | None = None, split: str = "train", download: bool = True) -> Dataset:
    """CIFAR-10 (50,000 train / 10,000 test 32×32 RGB images, 10 classes) from ``cifar-10-batches-py/``."""
    return _load(CIFAR10, data_dir, split, download)


def load_cifar100(data_dir: str | Path | None = None, split: str = "train", download: bool = True) -> Dataset:
    """CIFAR-100 (50,000 train / 10,000 test, 100 fine classes) from ``cifar-100-python/``."""
    return _load(CIFAR100, data_dir, split, download)

"""MNIST and Fashion-MNIST from IDX files (gzipped or not), with strict header and size checks."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import Dataset, DatasetError
from .download import fetch_url, search_dirs, target_dir, where

# IDX element types: third byte of the magic number.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode an IDX buffer: magic ``00 00 <type> <ndim>``, ``ndim`` big-endian uint32 dims, then the data."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{source}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DatasetError(f"{source}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetError(f"{source}: IDX size {len(raw)} bytes, expected {expected} for shape {dims}: "
                           f"file truncated or corrupt")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, transparently un-gzipping it (detected by its gzip magic bytes)."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: unreadable ({type(e).__name__}: {e}): delete it and download again") from e
    return parse_idx(raw, str(path))


@dataclass(frozen=True)
class _Spec:
    name: str
    title: str
    base_url: str
    md5: dict[str, str]  # file stem -> md5 of the .gz
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()


_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

MNIST = _Spec(
    "mnist", "MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/",
    {"train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
     "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
     "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
     "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c"},
    (0.1307,), (0.3081,), tuple(str(i) for i in range(10)))
FASHION_MNIST = _Spec(
    "fashion-mnist", "Fashion-MNIST", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    {"train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
     "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
     "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
     "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310"},
    (0.2860,), (0.3530,),
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    system_dirs=("/usr/share/datasets/fashion-mnist",))


def _existing(d: Path, stem: str) -> Path | None:
    return next((p for p in (d / stem, d / f"{stem}.gz") if p.is_file()), None)


def _find(spec: _Spec, data_dir: str | Path | None, split: str, download: bool) -> tuple[Path, Path]:
    stems = _STEMS[split]
    dirs = search_dirs(spec.name, data_dir, spec.system_dirs)
    for d in dirs:
        found = [_existing(d, s) for s in stems]
        if all(found):
            return found[0], found[1]  # type: ignore[return-value]
    dest = target_dir(spec.name, data_dir)
    if not download:
        raise DatasetError(f"{spec.title} {split} not found in {where(dirs)}: put {stems[0]}[.gz] and {stems[1]}[.gz] "
                           f"in {dest} or allow download ({spec.base_url})")
    paths = [_existing(dest, s) or fetch_url(spec.base_url + f"{s}.gz", dest / f"{s}.gz", spec.md5[s],
                                             f"{spec.title} {split}") for s in stems]
    return paths[0], paths[1]


def _load(spec: _Spec, data_dir: str | Path | None, split: str, download: bool) -> Dataset:
    if split not in _STEMS:
        raise ValueError(f"{spec.title} split must be one of {sorted(_STEMS)}, got {split!r}")
    image_path, label_path = _find(spec, data_dir, split, download)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DatasetError(f"{image_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DatasetError(f"{label_path}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DatasetError(f"{image_path}: {len(images)} images but {label_path.name} has {len(labels)} labels")
    if len(labels) and labels.max() >= 10:
        raise DatasetError(f"{label_path}: labels must lie in 0..9")
    return Dataset(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), 10,
                   spec.mean, spec.std, spec.name, spec.classes)


def load_mnist(data_dir: str | Path | None = None, split: str = "train", download: bool = True) -> Dataset:
    """MNIST: 60,000 train / 10,000 test 28×28 grayscale digits."""
    return _load(MNIST, data_dir, split, download)


def load_fashion_mnist(data_dir: str | Path | None = None, split: str = "train", download: bool = True) -> Dataset:
    """Fashion-MNIST: 60,000 train / 10,000 test 28×28 grayscale clothes; also found in Debian's
    ``/usr/share/datasets/fashion-mnist``."""
    return _load(FASHION_MNIST, data_dir, split, download)

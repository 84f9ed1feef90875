"""SVHN (cropped digits, format 2) from the official ``*_32x32.mat`` files; needs scipy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import Dataset, DatasetError
from .download import fetch_url, search_dirs, target_dir, where

BASE_URL = "http://ufldl.stanford.edu/housenumbers/"
FILES = {
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    "extra": ("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
}
MEAN = (0.4377, 0.4438, 0.4728)
STD = (0.1980, 0.2010, 0.1970)


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 in 0..9 (the file's label 10 is digit 0)."""
    try:
        import scipy.io
    except ImportError as e:
        raise ImportError("SVHN needs scipy to read .mat files: pip install scipy") from e
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as e:  # scipy raises many types on a damaged file
        raise DatasetError(f"{path}: unreadable .mat file ({type(e).__name__}: {e}): delete it and download again") \
            from e
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DatasetError(f"{path}: 'X' must be uint8 (32, 32, 3, N), got {getattr(x, 'dtype', None)} "
                           f"{getattr(x, 'shape', None)}")
    if not isinstance(y, np.ndarray) or y.size != x.shape[3] or y.dtype.kind not in "iuf":
        raise DatasetError(f"{path}: 'y' must hold {x.shape[3]} numeric labels")
    labels = y.reshape(-1).astype(np.int64)
    if len(labels) and (labels.min() < 1 or labels.max() > 10):
        raise DatasetError(f"{path}: SVHN labels must lie in 1..10")
    labels[labels == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


def load_svhn(data_dir: str | Path | None = None, split: str = "train", download: bool = True) -> Dataset:
    """SVHN: 73,257 train / 26,032 test / 531,131 extra 32×32 RGB digits, labels 0..9."""
    if split not in FILES:
        raise ValueError(f"SVHN split must be one of {sorted(FILES)}, got {split!r}")
    filename, md5 = FILES[split]
    dirs = search_dirs("svhn", data_dir)
    path = next((d / filename for d in dirs if (d / filename).is_file()), None)
    if path is None:
        dest = target_dir("svhn", data_dir) / filename
        if not download:
            raise DatasetError(f"SVHN {split} not found in {where(dirs)}: put {filename} in {dest.parent} "
                               f"or allow download ({BASE_URL + filename})")
        path = fetch_url(BASE_URL + filename, dest, md5, f"SVHN {split}")
    images, labels = read_svhn_mat(path)
    return Dataset(torch.from_numpy(images), torch.from_numpy(labels), 10, MEAN, STD, "svhn",
                   tuple(str(i) for i in range(10)))

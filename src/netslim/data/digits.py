"""scikit-learn's bundled 8×8 handwritten digits: the embedded default dataset (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import Dataset

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits(data_dir: str | Path | None = None, split: str = "train", download: bool = True) -> Dataset:
    """1,797 8×8 grayscale digits (values 0..16 scaled to 0..255), shape (N, 1, 8, 8), 10 classes.

    A fixed seeded permutation splits them: the last 20% (359) is "test", the rest (1,438) "train".
    ``data_dir`` and ``download`` are ignored (the data ships with scikit-learn); mean/std come from train.
    """
    if split not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn") from e
    bunch = sk_load_digits()
    images = np.rint(np.asarray(bunch.data, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.RandomState(SPLIT_SEED).permutation(len(labels))
    n_test = round(TEST_FRACTION * len(labels))
    train_idx, test_idx = perm[:-n_test], perm[-n_test:]
    train_pixels = images[train_idx].astype(np.float64) / 255.0
    mean, std = (float(train_pixels.mean()),), (float(train_pixels.std()),)
    idx = train_idx if split == "train" else test_idx
    return Dataset(torch.from_numpy(images[idx].copy()), torch.from_numpy(labels[idx].copy()), 10, mean, std, "digits",
                   tuple(str(i) for i in range(10)))

"""Datasets by name: ``load_dataset("cifar10", split="test")``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import Dataset
from .cifar import load_cifar10, load_cifar100
from .digits import load_digits
from .imagefolder import load_imagenet
from .mnist import load_fashion_mnist, load_mnist
from .svhn import load_svhn

DATASETS: dict[str, Callable[..., Dataset]] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "imagenet": load_imagenet,
    "digits": load_digits,
}

# The paper's training augmentation per dataset (SVHN and MNIST-like sets: none).
DEFAULT_AUGMENT: dict[str, str] = {
    "cifar10": "cifar", "cifar100": "cifar", "svhn": "none", "mnist": "none", "fashion-mnist": "none",
    "imagenet": "cifar", "digits": "none",
}


def load_dataset(name: str, data_dir: str | Path | None = None, split: str = "train", download: bool = True,
                 **kwargs: Any) -> Dataset:
    """Load a dataset split by registry name; extra keyword arguments go to the loader (e.g. ImageNet's)."""
    key = name.lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[key](data_dir, split, download, **kwargs)

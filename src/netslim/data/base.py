"""The in-memory dataset container, its error type, and deterministic splits."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class DatasetError(ValueError):
    """A dataset is missing, corrupt or could not be downloaded; the message says what to do."""


@dataclass(eq=False)
class Dataset:
    """A whole dataset split held in memory.

    ``images``: uint8 (N, C, H, W); ``labels``: int64 (N,) in ``[0, num_classes)``; ``mean``/``std``:
    per-channel normalization statistics in [0, 1] pixel units; ``classes``: optional class names.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    classes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.name}: labels must be int64 ({self.images.shape[0]},), got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")
        channels = self.images.shape[1]
        self.mean, self.std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"{self.name}: mean/std need {channels} values, got {len(self.mean)}/{len(self.std)}")
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
            raise ValueError(f"{self.name}: labels must lie in [0, {self.num_classes})")
        self.classes = tuple(self.classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one sample."""
        return tuple(self.images.shape[1:])

    def subset(self, indices: torch.Tensor, name: str | None = None) -> Dataset:
        """The samples at ``indices`` (a copy), with the same statistics and classes."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return Dataset(self.images[indices].clone(), self.labels[indices].clone(), self.num_classes, self.mean,
                       self.std, name or self.name, self.classes)


def validation_split(ds: Dataset, n: int, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Hold out ``n`` random samples of ``ds`` (the paper: 5,000 of CIFAR train, 6,000 of SVHN).

    Deterministic for a given ``seed``; both parts keep the original sample order.
    """
    if not 0 < n < len(ds):
        raise ValueError(f"validation size must be in (0, {len(ds)}), got {n}")
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    val_idx, _ = perm[:n].sort()
    train_idx, _ = perm[n:].sort()
    return ds.subset(train_idx, f"{ds.name}-train"), ds.subset(val_idx, f"{ds.name}-val")

"""A GPU-friendly batch iterator: uint8 data placed on the device once, batched indexing, seeded epochs."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from .augment import AUGMENTATIONS, apply_augmentation, draw_augmentation, normalize
from .base import Dataset


def _seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy's SeedSequence), stable across platforms."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class EpochOrder:
    """The sample order of a seeded, sharded epoch: what every loader here shares.

    The epoch's order is a permutation drawn from ``(seed, epoch)``: call ``set_epoch(epoch)`` before each
    epoch (as with ``DistributedSampler``), so a run resumed at epoch k sees the same batches. With
    ``world_size > 1`` every rank takes the strided slice ``rank::world_size`` of the same permutation,
    padded by wrapping to a multiple of ``world_size``, so all ranks get ``ceil(N / world_size)`` samples.
    Random augmentation draws come from a generator seeded by ``(seed, epoch, rank)``.
    """

    def __init__(self, dataset, batch_size: int, train: bool, shuffle: bool | None, drop_last: bool, seed: int,
                 rank: int, world_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if len(dataset) == 0:
            raise ValueError(f"{dataset.name} is empty")
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.shuffle = train if shuffle is None else shuffle
        self.drop_last, self.seed, self.rank, self.world_size = drop_last, seed, rank, world_size
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return math.ceil(len(self.dataset) / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order (and augmentation) the next iteration reproduces."""
        self.epoch = int(epoch)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in iteration order (CPU int64)."""
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(self.seed, self.epoch)))
        else:
            order = torch.arange(n)
        total = self.num_samples * self.world_size
        if total > n:  # wrap around, as DistributedSampler does
            order = torch.cat([order] * math.ceil(total / n))[:total]
        return order[self.rank:total:self.world_size]

    def epoch_indices(self) -> torch.Tensor:
        """The indices this epoch iterates (``drop_last`` applied)."""
        return self.indices()[:min(len(self) * self.batch_size, self.num_samples)]

    def augmentation_generator(self) -> torch.Generator:
        """The CPU generator of this epoch's (and rank's) augmentation draws."""
        return torch.Generator().manual_seed(_seed(self.seed, self.epoch, self.rank, 1))


class Loader(EpochOrder):
    """Iterate ``(images, labels)`` batches: float normalized (N, C, H, W) and int64 (N,), on ``device``.

    Order, sharding and seeding as in :class:`EpochOrder`. The epoch's order and every random draw are
    made on the CPU and moved to ``device`` once per epoch, so a batch costs only device ops (gather,
    crop, flip, normalize): no host-to-device copy, no synchronisation.
    """

    def __init__(self, dataset: Dataset, batch_size: int, train: bool = True, augment: str = "none",
                 shuffle: bool | None = None, drop_last: bool = False, seed: int = 0,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1,
                 dtype: torch.dtype = torch.float32) -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augment!r}; valid: {', '.join(AUGMENTATIONS)}")
        super().__init__(dataset, batch_size, train, shuffle, drop_last, seed, rank, world_size)
        self.augment = augment if train else "none"
        self.device, self.dtype = torch.device(device), dtype
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        self.mean = torch.tensor(dataset.mean, dtype=dtype).to(self.device)  # once: no copy per batch
        self.std = torch.tensor(dataset.std, dtype=dtype).to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.epoch_indices()
        stop = len(order)
        draws = draw_augmentation(self.augment, stop, self.augmentation_generator())
        draws = {k: v.to(self.device) for k, v in draws.items()}
        order = order.to(self.device)
        for start in range(0, stop, self.batch_size):
            idx = order[start:start + self.batch_size]
            batch_draws = {k: v[..., start:start + self.batch_size] for k, v in draws.items()}
            images = apply_augmentation(self.images[idx], self.augment, batch_draws)
            yield normalize(images, self.mean, self.std, self.dtype), self.labels[idx]

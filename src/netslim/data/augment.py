"""Whole-batch augmentation as tensor ops (no per-image Python loop); runs on the batch's device.

Random draws come from an optional ``torch.Generator`` (on any device); they are made on the
generator's device and moved to the batch's, so a CPU generator drives a CUDA batch reproducibly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _draw_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(batch / 255 - mean) / std`` per channel, for a uint8 (N, C, H, W) batch."""
    m = torch.as_tensor(mean, dtype=dtype, device=batch.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=dtype, device=batch.device).view(1, -1, 1, 1)
    return (batch.to(dtype) / 255 - m) / s


def random_crop(batch: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` then take an (H, W) crop at an independent random offset for each sample.

    One gather with per-sample row/column index tensors: ``out[n] = padded[n, :, dy[n]:dy[n]+H, dx[n]:dx[n]+W]``.
    """
    if padding == 0:
        return batch
    n, c, h, w = batch.shape
    padded = F.pad(batch, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=_draw_device(generator))
    dy, dx = offsets.to(batch.device)
    rows = (dy[:, None] + torch.arange(h, device=batch.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=batch.device))[:, None, None, :]  # (N, 1, 1, W)
    samples = torch.arange(n, device=batch.device)[:, None, None, None]
    channels = torch.arange(c, device=batch.device)[None, :, None, None]
    return padded[samples, channels, rows, cols]


def random_flip(batch: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each sample horizontally with probability ``p`` (a mask and ``torch.where``)."""
    mask = torch.rand(batch.shape[0], generator=generator, device=_draw_device(generator)) < p
    return torch.where(mask.to(batch.device).view(-1, 1, 1, 1), batch.flip(-1), batch)


AUGMENTATIONS = ("cifar", "mnist", "none")


def augment_batch(batch: torch.Tensor, preset: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply a preset: ``"cifar"`` = pad-4 random crop + horizontal flip; ``"mnist"``/``"none"`` = identity."""
    if preset == "cifar":
        return random_flip(random_crop(batch, 4, generator), 0.5, generator)
    if preset in ("mnist", "none"):
        return batch
    raise ValueError(f"unknown augmentation {preset!r}; valid: {', '.join(AUGMENTATIONS)}")

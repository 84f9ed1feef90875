"""Whole-batch augmentation as tensor ops (no per-image Python loop); runs on the batch's device.

Random draws and their use are separate: :func:`draw_augmentation` makes every random number an
epoch needs at once (on a CPU generator, so a run is reproducible on any device), and
:func:`apply_augmentation` uses a slice of them per batch. The Loader moves one epoch's draws to the
device once, so a training step costs no host-to-device copy and no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("cifar", "none")
CIFAR_PADDING = 4


def _draw_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def normalize(batch: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(batch / 255 - mean) / std`` per channel, for a uint8 (N, C, H, W) batch.

    ``mean``/``std`` may be tensors already on the batch's device (no copy then, as the Loader does)."""
    m = torch.as_tensor(mean, dtype=dtype, device=batch.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=dtype, device=batch.device).view(1, -1, 1, 1)
    return (batch.to(dtype) / 255 - m) / s


def crop_at(batch: torch.Tensor, padding: int, offsets: torch.Tensor) -> torch.Tensor:
    """Zero-pad by ``padding``, then crop each sample n at ``(dy, dx) = offsets[:, n]`` to the original size.

    One gather with per-sample row/column index tensors: ``out[n] = padded[n, :, dy[n]:dy[n]+H, dx[n]:dx[n]+W]``.
    """
    if padding == 0:
        return batch
    n, c, h, w = batch.shape
    padded = F.pad(batch, (padding, padding, padding, padding))
    dy, dx = offsets.to(batch.device)
    rows = (dy[:, None] + torch.arange(h, device=batch.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=batch.device))[:, None, None, :]  # (N, 1, 1, W)
    samples = torch.arange(n, device=batch.device)[:, None, None, None]
    channels = torch.arange(c, device=batch.device)[None, :, None, None]
    return padded[samples, channels, rows, cols]


def flip_where(batch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror horizontally the samples where ``mask`` (bool, (N,)) is set (a mask and ``torch.where``)."""
    return torch.where(mask.to(batch.device).view(-1, 1, 1, 1), batch.flip(-1), batch)


def random_crop(batch: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` then take an (H, W) crop at an independent random offset for each sample."""
    if padding == 0:
        return batch
    offsets = torch.randint(0, 2 * padding + 1, (2, batch.shape[0]), generator=generator,
                            device=_draw_device(generator))
    return crop_at(batch, padding, offsets)


def random_flip(batch: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each sample horizontally with probability ``p``."""
    return flip_where(batch, torch.rand(batch.shape[0], generator=generator, device=_draw_device(generator)) < p)


def draw_augmentation(preset: str, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Every random number ``preset`` needs for ``n`` samples: ``{"offsets": (2, n), "flip": (n,)}`` for
    ``"cifar"`` (the draws :func:`random_crop` then :func:`random_flip` would make), nothing otherwise."""
    if preset not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {preset!r}; valid: {', '.join(AUGMENTATIONS)}")
    if preset != "cifar":
        return {}
    device = _draw_device(generator)
    offsets = torch.randint(0, 2 * CIFAR_PADDING + 1, (2, n), generator=generator, device=device)
    return {"offsets": offsets, "flip": torch.rand(n, generator=generator, device=device) < 0.5}


def apply_augmentation(batch: torch.Tensor, preset: str, draws: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply ``preset`` with the given draws (one per sample of ``batch``): the paper's CIFAR augmentation
    is a pad-4 random crop and a horizontal flip (Sec. 4.1); ``"none"`` is the identity."""
    if preset == "cifar":
        return flip_where(crop_at(batch, CIFAR_PADDING, draws["offsets"]), draws["flip"])
    if preset == "none":
        return batch
    raise ValueError(f"unknown augmentation {preset!r}; valid: {', '.join(AUGMENTATIONS)}")

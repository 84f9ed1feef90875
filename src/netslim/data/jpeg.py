"""Batched image decoding to fixed-size uint8 squares: nvJPEG on a CUDA device, a pool of PIL threads elsewhere.

``decode_jpegs(sources, image_size, device, workers)`` turns files (or their bytes) into one uint8
(N, 3, S, S) tensor: the shorter side resized to ``resize_size`` (default S, bilinear, antialiased),
then the central S x S square. Two paths:

* CUDA, when torchvision loads: ``torchvision.io.decode_jpeg(list, device="cuda")`` decodes a batch
  on the GPU, then :func:`resize_center_crop` resizes with batched ``F.interpolate`` calls (one per
  distinct image shape). Files that are not 1- or 3-component JPEGs (PNG, CMYK/YCCK JPEG) and any
  the GPU decoder rejects go through the CPU decoder instead.
* CPU: a pool of ``workers`` threads (default ``os.cpu_count()``), each decoding chunks of files with
  PIL in draft mode (the JPEG decoder skips DCT detail it would discard). PIL releases the GIL while
  it decodes and resamples, so threads scale with the cores (1.85x on 2 cores, BENCHMARKS.md) without
  worker processes: nothing to pickle, no fork of a process holding CUDA state, and no
  ``if __name__ == "__main__"`` guard needed in the user's script, which spawned processes require.

Grayscale and CMYK images come out as RGB. An unreadable file raises :class:`DatasetError` (a
``ValueError``) naming it. Results do not depend on ``workers``.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .base import DatasetError

Source = str | os.PathLike | bytes | bytearray | memoryview
CHUNK = 32  # files per task given to a worker thread
GPU_BATCH = 256  # JPEGs per torchvision.io.decode_jpeg call on CUDA


def pil_image():
    """PIL's ``Image`` module, or an ImportError saying how to install it."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("decoding images needs Pillow: pip install pillow") from e
    return Image


def source_name(source: Source, index: int) -> str:
    """How an error names an image: its path, or ``<bytes #index>``."""
    return f"<bytes #{index}>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)


def resized_shape(width: int, height: int, resize_size: int) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to ``resize_size`` (never below it)."""
    scale = resize_size / min(width, height)
    return max(resize_size, round(width * scale)), max(resize_size, round(height * scale))


def decode_one(source: Source, resize_size: int, crop_size: int, name: str | None = None) -> np.ndarray:
    """One image with PIL: RGB uint8 (3, crop, crop), shorter side resized to ``resize_size``, center crop.

    ``name``: how an error names the image (default: its path, or ``<bytes #0>``)."""
    image_mod = pil_image()
    fp = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with image_mod.open(fp) as img:
            img.draft("RGB", (resize_size, resize_size))  # JPEG: decode at a reduced scale when possible
            img = img.convert("RGB")
            nw, nh = resized_shape(*img.size, resize_size)
            img = img.resize((nw, nh), image_mod.Resampling.BILINEAR)
            left, top = (nw - crop_size) // 2, (nh - crop_size) // 2
            img = img.crop((left, top, left + crop_size, top + crop_size))
            return np.array(img, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError, SyntaxError, image_mod.DecompressionBombError) as e:
        raise DatasetError(f"{name or source_name(source, 0)}: unreadable image ({type(e).__name__}: {e})") from e


def decode_chunk(chunk: list[tuple[int, Source]], resize_size: int, crop_size: int) -> np.ndarray:
    """Worker task: a stacked (n, 3, crop, crop) array for one chunk."""
    return np.stack([decode_one(source, resize_size, crop_size, source_name(source, i)) for i, source in chunk])


def _decode_cpu(sources: Sequence[Source], resize_size: int, crop_size: int, workers: int,
                progress: Callable[[int], None]) -> torch.Tensor:
    out = torch.empty(len(sources), 3, crop_size, crop_size, dtype=torch.uint8)
    indexed = list(enumerate(sources))
    chunks = [indexed[k:k + CHUNK] for k in range(0, len(indexed), CHUNK)]
    workers = max(1, min(workers, len(chunks)))
    if workers == 1:
        results = (decode_chunk(c, resize_size, crop_size) for c in chunks)
        _fill(out, chunks, results, progress)
        return out
    with ThreadPoolExecutor(workers, thread_name_prefix="netslim-decode") as pool:
        results = pool.map(decode_chunk, chunks, [resize_size] * len(chunks), [crop_size] * len(chunks))
        _fill(out, chunks, results, progress)
    return out


def _fill(out: torch.Tensor, chunks, results, progress: Callable[[int], None]) -> None:
    for chunk, array in zip(chunks, results, strict=True):
        out[chunk[0][0]:chunk[0][0] + len(chunk)] = torch.from_numpy(array)
        progress(len(chunk))


def jpeg_components(data: bytes) -> int:
    """Colour components of a JPEG from its frame header (1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK); 0 if not a JPEG."""
    if data[:3] != b"\xff\xd8\xff":
        return 0
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return 0
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn: P, Y, X, Nf
            return data[pos + 9] if pos + 9 < len(data) else 0
        if marker == 0xDA:  # start of scan before any frame header
            return 0
        pos += 2 + length
    return 0


def resize_center_crop(images: Sequence[torch.Tensor], resize_size: int, crop_size: int) -> torch.Tensor:
    """Resize (3, H, W) uint8 images (shorter side -> ``resize_size``, bilinear, antialiased), center-crop
    to ``crop_size``: a uint8 (N, 3, crop, crop) tensor on the images' device.

    Batched: one ``F.interpolate`` per distinct input shape (datasets repeat a few shapes), not per image.
    """
    if not images:
        raise ValueError("no images to resize")
    out = torch.empty(len(images), 3, crop_size, crop_size, dtype=torch.uint8, device=images[0].device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    for (h, w), idx in groups.items():
        nw, nh = resized_shape(w, h, resize_size)
        batch = torch.stack([images[i] for i in idx]).float()
        if (nh, nw) != (h, w):
            batch = F.interpolate(batch, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - crop_size) // 2, (nw - crop_size) // 2
        batch = batch[:, :, top:top + crop_size, left:left + crop_size]
        out[torch.tensor(idx, device=out.device)] = batch.round_().clamp_(0, 255).to(torch.uint8)
    return out


@functools.lru_cache(maxsize=1)
def _torchvision_decoder():
    """``torchvision.io.decode_jpeg`` and ``ImageReadMode``, or None when torchvision is missing or does
    not load against this torch build (a mismatched build fails with errors other than ImportError)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception:  # noqa: BLE001 - ImportError, RuntimeError/OSError from mismatched C++ extensions
        return None
    return decode_jpeg, ImageReadMode


def gpu_decode_available(device: str | torch.device) -> bool:
    """Whether :func:`decode_jpegs` decodes on the GPU for ``device``."""
    return torch.device(device).type == "cuda" and torch.cuda.is_available() and _torchvision_decoder() is not None


# UNVERIFIED on the machine this was written on (no GPU, no torchvision): see the docstring.
def decode_cuda_batch(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """Decode JPEG bytes on the GPU with nvJPEG: (3, H, W) uint8 CUDA tensors, None where the decoder failed.

    UNVERIFIED: written against torchvision's documented API (batched list input since 0.19) but never
    run: the machine this was written on has no GPU and no torchvision. The CPU path is the tested one;
    the batching and routing around this call (:func:`decode_on_gpu`) are tested with a PIL stand-in for it.
    """
    decode_jpeg, read_mode = _torchvision_decoder()
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        return list(decode_jpeg(tensors, mode=read_mode.RGB, device=device))
    except (RuntimeError, TypeError):  # one bad file fails the batch (older torchvision: no list input)
        decoded: list[torch.Tensor | None] = []
        for t in tensors:
            try:
                decoded.append(decode_jpeg(t, mode=read_mode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)  # the CPU decoder then decodes it or names the file
        return decoded


def read_source(source: Source) -> bytes:
    """The encoded bytes of an image (a path is read; a DatasetError names it if it cannot be)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        return Path(source).read_bytes()
    except OSError as e:
        raise DatasetError(f"{source}: unreadable image ({type(e).__name__}: {e})") from e


def decode_on_gpu(sources: Sequence[Source], resize_size: int, crop_size: int, device: torch.device, workers: int,
                progress: Callable[[int], None]) -> torch.Tensor:
    """:func:`decode_jpegs` on a CUDA device: nvJPEG in batches of GPU_BATCH, PIL for what it refuses."""
    out = torch.empty(len(sources), 3, crop_size, crop_size, dtype=torch.uint8, device=device)
    with ThreadPoolExecutor(max(1, min(workers, 16))) as io_pool:
        for start in range(0, len(sources), GPU_BATCH):
            batch = list(sources[start:start + GPU_BATCH])
            datas = list(io_pool.map(read_source, batch))
            gpu = [k for k, d in enumerate(datas) if jpeg_components(d) in (1, 3)]
            decoded = decode_cuda_batch([datas[k] for k in gpu], device) if gpu else []
            done = {k: img for k, img in zip(gpu, decoded, strict=True) if img is not None}
            if done:
                keys = sorted(done)
                out[start + torch.tensor(keys, device=device)] = resize_center_crop([done[k] for k in keys],
                                                                                    resize_size, crop_size)
            rest = [k for k in range(len(batch)) if k not in done]  # PNG, CMYK, or what nvJPEG refused
            for k in rest:
                image = decode_one(datas[k], resize_size, crop_size, source_name(batch[k], start + k))
                out[start + k] = torch.from_numpy(image).to(device)
            progress(len(batch))
    return out


def decode_jpegs(sources: Sequence[Source], image_size: int, device: str | torch.device = "cpu",
                 workers: int | None = None, *, resize_size: int | None = None, progress: bool = False,
                 desc: str = "decoding") -> torch.Tensor:
    """Decode images (paths or encoded bytes) to a uint8 (N, 3, image_size, image_size) tensor on ``device``.

    Shorter side resized to ``resize_size`` (default ``image_size``), then center-cropped. On a CUDA
    ``device`` with torchvision, JPEGs are decoded by nvJPEG in batches; otherwise by PIL in ``workers``
    threads (default ``os.cpu_count()``; 1 decodes in the calling thread) and the result is moved to ``device``.
    """
    resize_size = resize_size or image_size
    if image_size < 1 or resize_size < image_size:
        raise ValueError(f"need 1 <= image_size <= resize_size, got image_size={image_size}, "
                         f"resize_size={resize_size}")
    workers = workers if workers is not None else os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    device = torch.device(device)
    sources = list(sources)
    if not sources:
        return torch.empty(0, 3, image_size, image_size, dtype=torch.uint8, device=device)
    with tqdm(total=len(sources), desc=desc, disable=not progress, unit="img") as bar:
        if gpu_decode_available(device):
            return decode_on_gpu(sources, resize_size, image_size, device, workers, bar.update)
        return _decode_cpu(sources, resize_size, image_size, workers, bar.update).to(device)

"""Images decoded batch by batch while training consumes them: ImageNet-scale data that never fits in memory decoded.

:class:`StreamLoader` iterates :class:`~netslim.data.imagefolder.ImageFiles` like :class:`Loader` iterates an
in-memory dataset (same seeded, sharded order; ``set_epoch``; normalized float batches on ``device``), but
decodes each batch when it is needed, ``prefetch`` batches ahead in a background thread, so decoding
overlaps the training step instead of adding to it:

* training: the scale and aspect-ratio augmentation of Szegedy et al. (2015) used for ImageNet since
  (torchvision's ``RandomResizedCrop``: 8-100% of the area, aspect 3/4-4/3) and a horizontal flip;
* evaluation: the shorter side resized to ``resize_size`` (default 256/224 of ``image_size``), center crop.

Decoding runs on the GPU (nvJPEG through ``torchvision.io.decode_jpeg``, when torchvision loads and
``device`` is CUDA) or by ``workers`` PIL threads (PIL releases the GIL while decoding and resampling,
so threads use every core; see :mod:`netslim.data.jpeg`), in draft mode where the crop allows it. The
random draws are made in the calling thread from the epoch's seed, so the batches depend neither on
``workers`` nor on timing, and only up to resampling on where decoding runs.
"""

from __future__ import annotations

import io
import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from . import jpeg
from .augment import flip_where, normalize
from .imagefolder import ImageFiles
from .loader import EpochOrder

SCALE = (0.08, 1.0)  # fraction of the image area a training crop covers
RATIO = (3 / 4, 4 / 3)  # its aspect ratio (width / height), drawn log-uniformly
CHUNK = 8  # images per task given to a decoding thread


def crop_box(width: int, height: int, draw: Sequence[float], scale: tuple[float, float] = SCALE,
             ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
    """The random-resized-crop box ``(left, top, w, h)`` in pixels, from 4 uniform [0, 1) draws: area
    fraction, log aspect ratio, horizontal and vertical position.

    A function of its draws (no rejection sampling, unlike torchvision's ten tries): a box that does
    not fit the image is shrunk, keeping its aspect ratio, until it does.
    """
    area = width * height * (scale[0] + float(draw[0]) * (scale[1] - scale[0]))
    aspect = math.exp(math.log(ratio[0]) + float(draw[1]) * (math.log(ratio[1]) - math.log(ratio[0])))
    w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
    fit = min(1.0, width / w, height / h)
    w, h = min(width, max(1, round(w * fit))), min(height, max(1, round(h * fit)))
    left = min(width - w, int(float(draw[2]) * (width - w + 1)))
    top = min(height - h, int(float(draw[3]) * (height - h + 1)))
    return left, top, w, h


def decode_crop(source: jpeg.Source, draw: Sequence[float], size: int, name: str | None = None) -> np.ndarray:
    """One training image with PIL: RGB uint8 (3, size, size) of its :func:`crop_box`, bilinear, antialiased."""
    image_mod = jpeg.pil_image()
    fp = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with image_mod.open(fp) as img:
            width, height = img.size
            left, top, w, h = crop_box(width, height, draw)
            # draft: the smallest JPEG DCT scale at which the box still spans >= size pixels each way
            img.draft("RGB", (math.ceil(width * size / w), math.ceil(height * size / h)))
            fx, fy = img.size[0] / width, img.size[1] / height
            img = img.convert("RGB").resize((size, size), image_mod.Resampling.BILINEAR,
                                            box=(left * fx, top * fy, (left + w) * fx, (top + h) * fy))
            return np.array(img, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError, SyntaxError, image_mod.DecompressionBombError) as e:
        name = name or jpeg.source_name(source, 0)
        raise jpeg.DatasetError(f"{name}: unreadable image ({type(e).__name__}: {e})") from e


def _decode_crops_chunk(chunk: list[tuple[str, list[float]]], size: int) -> np.ndarray:
    """Worker task: a stacked (n, 3, size, size) array of training crops."""
    return np.stack([decode_crop(path, draw, size, str(path)) for path, draw in chunk])


def _resize_crops(images: list[torch.Tensor], draws: torch.Tensor, size: int) -> torch.Tensor:
    """GPU path: crop each decoded (3, H, W) image to its box and resize to (size, size): uint8 (n, 3, size, size)."""
    out = torch.empty(len(images), 3, size, size, dtype=torch.uint8, device=images[0].device)
    for k, (img, draw) in enumerate(zip(images, draws.tolist(), strict=True)):
        left, top, w, h = crop_box(img.shape[-1], img.shape[-2], draw)
        crop = img[None, :, top:top + h, left:left + w].float()
        resized = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[k] = resized[0].round_().clamp_(0, 255).to(torch.uint8)
    return out


class StreamLoader(EpochOrder):
    """Iterate ``(images, labels)`` of image files, decoding each batch as it is needed (see the module doc).

    ``workers``: CPU decoding threads (default: the CPU count; 1 decodes in the background thread);
    ``prefetch``: batches decoded ahead; ``gpu_decode``: nvJPEG on a CUDA ``device`` (default: when
    torchvision is available). Call :meth:`close` (or use it as a context manager) to stop the workers.
    """

    def __init__(self, files: ImageFiles, batch_size: int, train: bool = True, *, image_size: int | None = None,
                 resize_size: int | None = None, shuffle: bool | None = None, drop_last: bool = False, seed: int = 0,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1, workers: int | None = None,
                 prefetch: int = 2, gpu_decode: bool | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(files, batch_size, train, shuffle, drop_last, seed, rank, world_size)
        image_size = image_size or files.image_size
        self.resize_size = resize_size or (image_size if train else round(image_size * 256 / 224))
        if image_size < 1 or self.resize_size < image_size:
            raise ValueError(f"need 1 <= image_size <= resize_size, got {image_size} and {self.resize_size}")
        self.workers = workers if workers is not None else os.cpu_count() or 1
        if self.workers < 1 or prefetch < 1:
            raise ValueError(f"workers and prefetch must be >= 1, got {self.workers} and {prefetch}")
        self.image_size, self.prefetch = image_size, prefetch
        self.device, self.dtype = torch.device(device), dtype
        available = jpeg.gpu_decode_available(self.device)
        if gpu_decode and not available:
            raise ValueError("GPU JPEG decoding needs a CUDA device and torchvision (pip install netslim[zoo])")
        self.gpu_decode = available if gpu_decode is None else gpu_decode
        self.labels = files.labels.to(self.device)
        self.mean = torch.tensor(files.mean, dtype=dtype).to(self.device)
        self.std = torch.tensor(files.std, dtype=dtype).to(self.device)
        self._pool: ThreadPoolExecutor | None = None
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one decoded sample."""
        return 3, self.image_size, self.image_size

    def close(self) -> None:
        """Stop the decoding threads (started again by the next iteration)."""
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    def __enter__(self) -> StreamLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def _threads(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="netslim-decode")
        return self._pool

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.epoch_indices()
        generator = self.augmentation_generator()
        crops = torch.rand(len(order), 4, generator=generator, dtype=torch.float64) if self.train else None
        flips = (torch.rand(len(order), generator=generator) < 0.5).to(self.device) if self.train else None
        labels = self.labels[order.to(self.device)]
        starts = range(0, len(order), self.batch_size)
        with ThreadPoolExecutor(1, thread_name_prefix="netslim-decode") as producer:
            pending: deque = deque()

            def submit(start: int) -> None:
                stop = start + self.batch_size
                pending.append(producer.submit(self._decode, order[start:stop],
                                               None if crops is None else crops[start:stop]))

            for start in starts[:self.prefetch]:
                submit(start)
            for k, start in enumerate(starts):
                images, ready = pending.popleft().result()
                if k + self.prefetch < len(starts):
                    submit(starts[k + self.prefetch])
                if ready is not None:  # decoded on the producer's CUDA stream
                    torch.cuda.current_stream(self.device).wait_event(ready)
                    images.record_stream(torch.cuda.current_stream(self.device))
                if flips is not None:
                    images = flip_where(images, flips[start:start + self.batch_size])
                yield normalize(images, self.mean, self.std, self.dtype), labels[start:start + self.batch_size]

    def _decode(self, indices: torch.Tensor, draws: torch.Tensor | None):
        """uint8 (n, 3, S, S) on the device for the files at ``indices`` (runs in the producer thread), and the
        CUDA event after which it is ready (None off CUDA)."""
        paths = [self.dataset.files[int(i)] for i in indices]
        if self._stream is None:
            return self._decode_cpu(paths, draws), None
        with torch.cuda.stream(self._stream):
            if self.gpu_decode:
                images = self._decode_gpu(paths, draws)
            else:
                images = self._decode_cpu(paths, draws).pin_memory().to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._stream)
        return images, ready

    def _decode_cpu(self, paths: list, draws: torch.Tensor | None) -> torch.Tensor:
        if draws is not None:
            items = list(zip([str(p) for p in paths], draws.tolist(), strict=True))
            fn, extra = _decode_crops_chunk, (self.image_size,)
        else:  # the in-memory decoder's task: resized center crops
            items = list(enumerate(paths))
            fn, extra = jpeg.decode_chunk, (self.resize_size, self.image_size)
        tasks = [items[k:k + CHUNK] for k in range(0, len(items), CHUNK)]
        if self.workers == 1:
            arrays = [fn(t, *extra) for t in tasks]
        else:
            arrays = list(self._threads().map(fn, tasks, *[[e] * len(tasks) for e in extra]))
        return torch.from_numpy(np.concatenate(arrays))

    def _decode_gpu(self, paths: list, draws: torch.Tensor | None) -> torch.Tensor:
        if draws is None:  # evaluation: nvJPEG, batched resize and center crop
            return jpeg.decode_on_gpu(paths, self.resize_size, self.image_size, self.device, 8, lambda n: None)
        datas = [jpeg.read_source(p) for p in paths]
        out = torch.empty(len(paths), 3, self.image_size, self.image_size, dtype=torch.uint8, device=self.device)
        on_gpu = [k for k, d in enumerate(datas) if jpeg.jpeg_components(d) in (1, 3)]
        decoded = jpeg.decode_cuda_batch([datas[k] for k in on_gpu], self.device) if on_gpu else []
        done = {k: img for k, img in zip(on_gpu, decoded, strict=True) if img is not None}
        if done:
            keys = sorted(done)
            out[torch.tensor(keys, device=self.device)] = _resize_crops([done[k] for k in keys], draws[keys],
                                                                        self.image_size)
        for k in (k for k in range(len(paths)) if k not in done):  # PNG, CMYK, or what nvJPEG refused
            image = decode_crop(datas[k], draws[k].tolist(), self.image_size, str(paths[k]))
            out[k] = torch.from_numpy(image).to(self.device)
        return out

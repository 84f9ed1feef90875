"""ImageNet-style class folders (``root/<split>/<class>/*.JPEG``): listed as files, or decoded into memory.

:func:`list_image_folder` lists a split as :class:`ImageFiles` (paths and labels), which
:class:`netslim.data.StreamLoader` decodes batch by batch as training consumes them, with the
random-resized-crop augmentation: the way to train on all of ImageNet. :func:`load_image_folder`
decodes a split once into one uint8 tensor of fixed-size center crops: for subsets (all of ImageNet
train would need ~190 GB at 224×224). Decoding is batched (:mod:`netslim.data.jpeg`): PIL threads on
every CPU core, or nvJPEG with ``device="cuda"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .base import Dataset, DatasetError
from .download import search_dirs, where
from .jpeg import decode_jpegs, decode_one

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SPLIT_DIRS = {"train": ("train",), "test": ("val", "test"), "val": ("val",)}


def decode_image(path: Path, resize_size: int, crop_size: int) -> np.ndarray:
    """RGB uint8 (3, crop, crop): shorter side resized to ``resize_size`` (bilinear), then center crop."""
    return decode_one(path, resize_size, crop_size)


def _images_in(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_dirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass(eq=False)
class ImageFiles:
    """A split of image files with labels, not decoded: what :class:`netslim.data.StreamLoader` reads."""

    files: list[Path]
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    name: str = "imagefolder"
    classes: tuple[str, ...] = field(default=())
    image_size: int = 224  # the side of the square the files are decoded to

    def __post_init__(self) -> None:
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.files),):
            raise ValueError(f"{self.name}: labels must be int64 ({len(self.files)},)")

    def __len__(self) -> int:
        return len(self.files)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one decoded sample."""
        return 3, self.image_size, self.image_size

    def subset(self, indices: torch.Tensor, name: str | None = None) -> ImageFiles:
        """The files at ``indices``, with the same statistics and classes."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return ImageFiles([self.files[int(i)] for i in indices], self.labels[indices].clone(), self.num_classes,
                          self.mean, self.std, name or self.name, self.classes, self.image_size)


def list_image_folder(root: str | Path, split_dir: str = "train", *, classes: list[str] | None = None,
                      max_per_class: int | None = None, name: str = "imagefolder",
                      mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> ImageFiles:
    """The images of ``root/split_dir/<class>/*`` and their labels (sorted class folders unless ``classes``)."""
    folder = Path(root) / split_dir
    if not folder.is_dir():
        raise DatasetError(f"{folder} not found: put <class>/*.JPEG folders there")
    found = [p.name for p in _class_dirs(folder)]
    if not found:
        loose = "" if not _images_in(folder) else " (it holds loose images: sort them into <class>/ folders)"
        raise DatasetError(f"{folder} has no class folders{loose}")
    classes = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DatasetError(f"{folder}: class folders {unknown[:5]} are not among the {len(classes)} known classes")
    index = {c: i for i, c in enumerate(classes)}
    files: list[tuple[Path, int]] = []
    for c in found:
        files += [(p, index[c]) for p in _images_in(folder / c)[:max_per_class]]
    if not files:
        raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ImageFiles([p for p, _ in files], labels, len(classes), mean, std, name, tuple(classes))


def load_image_folder(root: str | Path, split_dir: str = "train", *, image_size: int = 224,
                      resize_size: int | None = None, classes: list[str] | None = None,
                      max_per_class: int | None = None, name: str = "imagefolder",
                      mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                      progress: bool = True, workers: int | None = None, device: str | torch.device = "cpu") -> Dataset:
    """Decode ``root/split_dir/<class>/*`` to a uint8 (N, 3, image_size, image_size) dataset.

    ``classes`` fixes the label order (default: the sorted class folders); ``resize_size`` is the shorter
    side before the center crop (default ``image_size``: the whole central square). ``workers``: decoding
    threads (default: one per CPU core); ``device="cuda"`` decodes JPEGs on the GPU (nvJPEG, needs
    torchvision). The dataset is returned on the CPU either way, like every other loader's.
    """
    listed = list_image_folder(root, split_dir, classes=classes, max_per_class=max_per_class, name=name,
                               mean=mean, std=std)
    resize_size = resize_size or image_size
    if resize_size < image_size:
        raise ValueError(f"resize_size {resize_size} must be >= image_size {image_size}")
    images = decode_jpegs(listed.files, image_size, device, workers, resize_size=resize_size,
                          progress=progress, desc=f"decoding {Path(root) / split_dir}").cpu()
    return Dataset(images, listed.labels, listed.num_classes, mean, std, name, listed.classes)


def imagenet_split(data_dir: str | Path | None = None, split: str = "train") -> tuple[Path, str, list[str] | None]:
    """Where an ImageNet split is: (root, split folder, the sorted ``train/`` wnids that fix the labels)."""
    if split not in ("train", "test"):
        raise ValueError(f"ImageNet split must be 'train' or 'test', got {split!r}")
    dirs = search_dirs("imagenet", data_dir)
    candidates = _SPLIT_DIRS[split]
    found = next(((d, s) for d in dirs for s in candidates if (d / s).is_dir()), None)
    if found is None:
        raise DatasetError(f"ImageNet {split} not found in {where(dirs)}: it cannot be downloaded automatically "
                           f"(registration at https://image-net.org); put {candidates[0]}/<wnid>/*.JPEG in "
                           f"{dirs[0]}")
    root, split_dir = found
    classes = [p.name for p in _class_dirs(root / "train")] if (root / "train").is_dir() else None
    return root, split_dir, classes or None


def list_imagenet(data_dir: str | Path | None = None, split: str = "train", *, image_size: int = 224,
                  max_per_class: int | None = None) -> ImageFiles:
    """The files of an ImageNet split (``train/<wnid>/*.JPEG`` or ``val/<wnid>/*.JPEG``), for streaming."""
    root, split_dir, classes = imagenet_split(data_dir, split)
    files = list_image_folder(root, split_dir, classes=classes, max_per_class=max_per_class, name="imagenet")
    files.image_size = image_size
    return files


def load_imagenet(data_dir: str | Path | None = None, split: str = "train", download: bool = True, *,
                  image_size: int = 224, resize_size: int | None = None, max_per_class: int | None = None,
                  progress: bool = True, workers: int | None = None, device: str | torch.device = "cpu") -> Dataset:
    """ImageNet (ILSVRC-2012) or a subset of it, from ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``.

    ``split``: "train" or "test" (the ``val/`` folder). Labels follow the sorted ``train/`` wnids when
    present. Test images default to the usual resize-256/center-crop-224 (scaled with ``image_size``);
    train images keep their whole central square (``resize_size = image_size``). Never downloads:
    ImageNet needs registration, so ``download`` is accepted only for a uniform loader signature.
    ``workers`` and ``device`` choose how images are decoded (see :func:`load_image_folder`).
    """
    root, split_dir, classes = imagenet_split(data_dir, split)
    if resize_size is None and split == "test":
        resize_size = round(image_size * 256 / 224)
    return load_image_folder(root, split_dir, image_size=image_size, resize_size=resize_size, classes=classes,
                             max_per_class=max_per_class, name="imagenet", progress=progress, workers=workers,
                             device=device)

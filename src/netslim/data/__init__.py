"""Datasets for network slimming: in-memory uint8 loaders, batched tensor augmentation, a seeded Loader.

    train = load_dataset("cifar10", data_dir, split="train")         # Dataset: uint8 (N, 3, 32, 32)
    train, val = validation_split(train, 5000, seed=0)               # the paper's held-out set
    loader = Loader(train, 64, train=True, augment="cifar", device="cuda")
    imagenet = StreamLoader(list_imagenet(data_dir), 256, device="cuda")   # decoded batch by batch
    for epoch in range(160):
        loader.set_epoch(epoch)
        for images, labels in loader: ...
"""

from .augment import apply_augmentation, draw_augmentation, normalize, random_crop, random_flip
from .base import Dataset, DatasetError, validation_split
from .cifar import load_cifar10, load_cifar100
from .digits import load_digits
from .download import cache_dir, check_md5, md5sum
from .experiment import evaluation_loader, make_loaders, recalibration_loader
from .imagefolder import ImageFiles, list_image_folder, list_imagenet, load_image_folder, load_imagenet
from .loader import Loader
from .mnist import load_fashion_mnist, load_mnist, parse_idx, read_idx
from .registry import DATASETS, DEFAULT_AUGMENT, load_dataset
from .stream import StreamLoader
from .svhn import load_svhn

__all__ = [
    "DATASETS", "DEFAULT_AUGMENT", "Dataset", "DatasetError", "ImageFiles", "Loader", "StreamLoader",
    "apply_augmentation", "list_image_folder", "list_imagenet",
    "cache_dir", "check_md5", "draw_augmentation", "evaluation_loader", "load_cifar10", "load_cifar100",
    "load_dataset", "load_digits",
    "load_fashion_mnist", "load_image_folder", "load_imagenet", "load_mnist", "load_svhn", "make_loaders", "md5sum",
    "normalize",
    "recalibration_loader",
    "parse_idx", "random_crop", "random_flip", "read_idx", "validation_split",
]

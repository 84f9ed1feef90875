"""The loaders of one experiment: its dataset's train, validation and test splits, sharded under torchrun; and
the loaders that measure and re-estimate a model outside an experiment (netslim prune --dataset)."""

from __future__ import annotations

from .. import distributed
from .base import validation_split
from .imagefolder import list_imagenet
from .loader import Loader
from .registry import DEFAULT_AUGMENT, load_dataset
from .stream import StreamLoader


def make_loaders(config, batch_size: int, device, seed: int):
    """Train, validation (or None) and test loaders of the experiment's dataset, and the training set.

    ``config``: a :class:`netslim.pipeline.ExperimentConfig` (read: ``dataset``, ``data_dir``, ``download``,
    ``val_size``, ``train_subset``, ``augment``, ``image_size``, ``stream``).
    Under torchrun each rank reads its own shard of every epoch with ``batch_size / world_size``
    samples per step, so the global batch is ``batch_size`` whatever the number of processes.
    ImageNet is streamed (decoded batch by batch, :class:`StreamLoader`): it does not fit
    in memory decoded.
    """
    info = distributed.current()
    if batch_size % info.world_size:
        raise ValueError(f"batch size {batch_size} is not divisible by the {info.world_size} processes")
    stream = streams(config)
    if stream:
        train_set = list_imagenet(config.data_dir, "train", image_size=config.image_size)
        test_set = list_imagenet(config.data_dir, "test", image_size=config.image_size)
    else:
        train_set = load_dataset(config.dataset, config.data_dir, "train", config.download)
        test_set = load_dataset(config.dataset, config.data_dir, "test", config.download)
    val_set = None
    if config.val_size:
        train_set, val_set = validation_split(train_set, config.val_size, seed)
    if config.train_subset and config.train_subset < len(train_set):
        train_set, _ = validation_split(train_set, len(train_set) - config.train_subset, seed + 1)
    shard = dict(seed=seed, device=device, rank=info.rank, world_size=info.world_size)
    if stream:
        loader = StreamLoader(train_set, batch_size // info.world_size, train=True, **shard)
        val = StreamLoader(val_set, 250, train=False, device=device) if val_set is not None else None
        return loader, val, StreamLoader(test_set, 250, train=False, device=device), train_set
    augment = config.augment or DEFAULT_AUGMENT.get(config.dataset.lower().replace("_", "-"), "none")
    loader = Loader(train_set, batch_size // info.world_size, train=True, augment=augment, **shard)
    val = Loader(val_set, 1000, train=False, device=device) if val_set is not None else None
    test = Loader(test_set, 1000, train=False, device=device)
    return loader, val, test, train_set


def streams(config) -> bool:
    """Whether the experiment's images are decoded batch by batch: ImageNet unless ``stream: false``."""
    imagenet = config.dataset.lower() == "imagenet"
    if config.stream and not imagenet:
        raise ValueError(f"stream: true applies to image-file datasets (imagenet), not {config.dataset}")
    return imagenet if config.stream is None else config.stream


def evaluation_loader(dataset: str, data_dir: str | None = None, download: bool = True,
                      batch_size: int = 1000) -> Loader:
    """The test split of a dataset by name, in order, unaugmented: for measuring a model's accuracy."""
    return Loader(load_dataset(dataset, data_dir, "test", download), batch_size, train=False)


def recalibration_loader(dataset: str, data_dir: str | None = None, download: bool = True,
                         batch_size: int = 64) -> Loader:
    """Shuffled training batches of a dataset by name, with its default augmentation: what BN statistics
    are re-estimated on (:func:`netslim.recalibrate_bn`) after pruning."""
    augment = DEFAULT_AUGMENT.get(dataset, "none")
    return Loader(load_dataset(dataset, data_dir, "train", download), batch_size, train=True, augment=augment)

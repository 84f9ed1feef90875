"""What the subcommands share: the parser and its help format, the types of numbers and sizes, the option
groups several subcommands take, and the checks of the files and folders options name."""

from __future__ import annotations

import argparse
import contextlib
import math
from pathlib import Path

from ..runfolder import check_output, inside_run_folders, refuse_overwriting_inputs
from ..train import AMP_MODES, TrainConfig


class UsageError(ValueError):
    """A problem with what the user asked for."""


def number(convert, accept, rule: str):
    """An argparse type: ``convert`` the text, then require ``accept(value)``, else say ``rule``."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if convert is int else 'a number'}") \
                from None
        if not (math.isfinite(value) and accept(value)):
            raise argparse.ArgumentTypeError(f"{text} {rule}")
        return value
    return parse


fraction = number(float, lambda v: 0 <= v < 1, "is outside [0, 1) (e.g. 0.7 prunes 70%)")
fraction_open = number(float, lambda v: 0 < v <= 1, "is outside (0, 1] (e.g. 0.5 keeps half)")
positive_int = number(int, lambda v: v >= 1, "must be >= 1")
non_negative = number(float, lambda v: v >= 0, "must be >= 0")
positive = number(float, lambda v: v > 0, "must be > 0")
seed = number(int, lambda v: 0 <= v < 1 << 32, "is not a seed: give an integer in [0, 2**32)")
share = number(float, lambda v: 0 < v < 1, "must be a share in (0, 1), e.g. 0.5")


def input_size(text: str) -> tuple[int, ...]:
    """--input-size: one side (32) or up to four numbers (3,32,32 or 3x32x32)."""
    parts = text.lower().replace("x", ",").split(",")
    try:
        size = tuple(int(s) for s in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 32 or 3,32,32") from None
    if not 1 <= len(size) <= 4 or any(not 1 <= s <= 1 << 16 for s in size):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 32 or 3,32,32")
    return size


def _has_default(action: argparse.Action) -> bool:
    """Whether ``--help`` shows the option's default: not for the empty ones (None, False, [])."""
    empty = action.default is None or action.default is False or action.default == []
    return bool(action.option_strings) and not empty and action.default is not argparse.SUPPRESS


class HelpFormatter(argparse.HelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text + " (default: %(default)s)" if _has_default(action) and "%(default)" not in text else text


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.help is None and _has_default(action):  # argparse shows no line for an option without help
            action.help = "(default: %(default)s)"
        return action

    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(f"{self.prog}: {message}")


# -- option groups --

def data_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--dataset", required=required, help="cifar10, cifar100, svhn, mnist, fashion-mnist, "
                   "imagenet or digits (embedded)")
    p.add_argument("--data-dir", help="where the dataset files are (or will be downloaded)")
    p.add_argument("--no-download", action="store_true", help="never download a missing dataset")
    p.add_argument("--val-size", type=int, default=0, help="hold out N training images for model selection")


def factory_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--factory", metavar="MODULE:FUNCTION",
                   help="the package.module:function (or ultralytics:your.yaml) that built the checkpoint's "
                        "model: code or a config of your own named in a file runs only when you name it here")
    p.add_argument("--trust-pickle", action="store_true",
                   help="also accept another tool's pickled checkpoint (an Ultralytics .pt): loading it runs "
                        "code from the file, so only for files you trust")


def overwrite_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files that exist (without it, an existing output is refused)")


def train_options(p: argparse.ArgumentParser) -> None:
    """The options of a training stage (train and finetune); their defaults are :class:`TrainConfig`'s own."""
    defaults = TrainConfig()
    p.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    p.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    p.add_argument("--lr", type=positive, default=defaults.lr)
    p.add_argument("--weight-decay", type=non_negative, default=defaults.weight_decay)
    p.add_argument("--seed", type=seed, default=defaults.seed)
    p.add_argument("--device", default=defaults.device, help="auto (CUDA if present), cpu, cuda")
    p.add_argument("--out", required=True, help="run folder (created; an existing run there is resumed)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across torchrun processes (CUDA)")
    p.add_argument("--amp", default=defaults.amp, choices=AMP_MODES,
                   help="mixed precision (auto: bf16 on CUDA, off on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA graphs on GPU)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="capture the whole training step as one CUDA graph and replay it (CUDA; the last "
                        "partial batch of each epoch runs eagerly)")


def train_config(args: argparse.Namespace, **more) -> TrainConfig:
    """The :class:`TrainConfig` of :func:`train_options` (and ``more`` fields)."""
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       seed=args.seed, device=args.device, progress=not args.no_progress, sync_bn=args.sync_bn,
                       amp=args.amp, compile=args.compile, cuda_graph=args.cuda_graph, **more)


def data_arguments(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`data_options` for the library's training functions."""
    return dict(dataset=args.dataset, data_dir=args.data_dir, download=not args.no_download, val_size=args.val_size)


# -- what options name --

def named(path: str | None, option: str) -> str:
    """``path`` unless it is empty (an empty --out would be the working directory)."""
    if path is None or not path.strip():
        raise UsageError(f"{option} is empty: give a {'folder' if option == '--out' else 'file'} name")
    return path


def outputs(given: dict[str, str | None], inputs: dict[str, str | None], overwrite: bool) -> dict[str, Path | None]:
    """The output files named by options, each a new path or (with --overwrite) a regular file, none an input."""
    names = {option: named(path, option) for option, path in given.items() if path is not None}
    refuse_overwriting_inputs(names, inputs)
    return {option: check_output(path, overwrite, option) if path is not None else None
            for option, path in given.items()}


def claimed(paths: dict[str, Path | None]) -> contextlib.AbstractContextManager:
    """Hold, for the command, the run folders the outputs lie in (see :func:`netslim.runfolder.inside_run_folders`)."""
    return inside_run_folders(*(path.parent for path in paths.values() if path is not None))

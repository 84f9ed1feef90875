"""``netslim prune``: prune a trained checkpoint (or a model factory) into a compact checkpoint file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..deployment import TARGETS, target_defaults
from ..plan import DEFAULT_PERCENT
from ..prune_checkpoint import prune_checkpoint
from ..timing import BACKENDS
from .common import (
    UsageError,
    claimed,
    data_options,
    factory_options,
    fraction,
    fraction_open,
    input_size,
    number,
    outputs,
    overwrite_option,
    positive,
    positive_int,
)


def add_parser(subparsers) -> None:
    gpu_round, cpu_round = target_defaults("gpu")["round_to"], target_defaults("cpu")["round_to"]
    p = subparsers.add_parser("prune", help="prune a trained checkpoint (or a model factory) into a compact model")
    p.add_argument("checkpoint", help="a netslim checkpoint, or package.module:factory / torchvision:NAME")
    amount = p.add_mutually_exclusive_group()  # one amount to prune
    amount.add_argument("--percent", type=fraction,
                        help=f"global fraction of channels to prune (default {DEFAULT_PERCENT} when no other amount "
                             "is given)")
    amount.add_argument("--target-flops", type=fraction_open,
                        help="prune until FLOPs <= this fraction of the original")
    amount.add_argument("--target-params", type=fraction_open, help="prune until parameters <= this fraction")
    amount.add_argument("--target-latency", type=positive, metavar="MS",
                        help="prune (in |γ| order) until the predicted latency on this machine is <= MS "
                             "milliseconds, from per-layer latency tables measured here (cached)")
    amount.add_argument("--target-speedup", type=number(float, lambda v: v >= 1, "must be >= 1"), metavar="X",
                        help="prune until the predicted latency is the original's / X")
    p.add_argument("--latency-batch", type=positive_int, default=1,
                   help="batch size the latency is planned and measured at")
    p.add_argument("--latency-backend", choices=BACKENDS, default="eager",
                   help="runtime the latency is planned and measured on: eager PyTorch, ONNX Runtime on the CPU, "
                        "or torch.compile (TorchInductor; each measured model is compiled first); in the --target's "
                        "format: fp32 on the CPU, bf16 channels_last on the GPU for a gpu target")
    p.add_argument("--refresh-latency-tables", action="store_true",
                   help="measure the latency tables again instead of reading them from the cache (they are checked "
                        "against the whole model measured now either way)")
    p.add_argument("--input-size", type=input_size, help="input size (C,H,W) for models that do not declare one")
    p.add_argument("--num-classes", type=positive_int, help="for a model factory")
    amount.add_argument("--layer-percent", type=fraction, help="prune this fraction of every layer instead")
    p.add_argument("--max-layer-fraction", type=fraction, help="prune at most this fraction of any layer")
    p.add_argument("--min-channels", type=positive_int, default=1)
    p.add_argument("--round-to", type=positive_int,
                   help=f"keep channel counts multiples of N, keeping the next-largest |γ| (default: {gpu_round} for "
                        f"a gpu target, for tensor cores; {cpu_round} for cpu: exactly the percent asked; with a "
                        "latency target: also the channel blocks the latency tables show are faster)")
    p.add_argument("--target", default="auto", choices=("auto", *TARGETS),
                   help="where the compact model will run (auto: gpu when this machine has CUDA)")
    p.add_argument("--fold", choices=("exact", "approximate", "carrier", "none"),
                   help="what becomes of pruned channels' constant output β: exact (default) folds it where that "
                        "is exact and drops it next to zero padding; approximate also folds it there (exact "
                        "inside the map, approximate at its border); carrier keeps one pruned channel per "
                        "zero-padded conv as a constant that carries the others exactly (a few channels more); "
                        "none drops it")
    p.add_argument("--no-fold", action="store_true", help="the same as --fold none")
    p.add_argument("--approximate-fold", action="store_true", help="the same as --fold approximate")
    p.add_argument("--out", required=True, help="file for the compact checkpoint (.pt)")
    overwrite_option(p)
    p.add_argument("--plan-out", help="also write the plan as JSON here")
    p.add_argument("--ultralytics-out", metavar="FILE",
                   help="also write the compact model as an Ultralytics checkpoint (for an Ultralytics model)")
    p.add_argument("--recalibrate", type=positive_int, metavar="N",
                   help="re-estimate BN statistics of the compact model on N training batches (of --dataset, or "
                        "of --data for an Ultralytics model)")
    p.add_argument("--data", metavar="DATA.YAML",
                   help="an Ultralytics dataset yaml: --recalibrate reads its training images with Ultralytics' "
                        "own loader")
    factory_options(p)
    data_options(p)


def _fold_mode(args: argparse.Namespace) -> bool | str:
    """--fold, or the older single flags (one of them at most)."""
    given = [m for m, on in (("none", args.no_fold), ("approximate", args.approximate_fold), (args.fold, args.fold))
             if on]
    if len(set(given)) > 1:
        raise UsageError("give one of --fold, --no-fold and --approximate-fold")
    mode = given[0] if given else "exact"
    return False if mode == "none" else mode


def run(args: argparse.Namespace) -> int:
    fold = _fold_mode(args)
    files = outputs({"--out": args.out, "--plan-out": args.plan_out, "--ultralytics-out": args.ultralytics_out},
                    {"checkpoint": args.checkpoint if Path(args.checkpoint).exists() else None}, args.overwrite)
    with claimed(files):  # the run folders they lie in: no other process may own one meanwhile
        prune_checkpoint(
            args.checkpoint, files["--out"], plan_out=files["--plan-out"], ultralytics_out=files["--ultralytics-out"],
            overwrite=args.overwrite, percent=args.percent, layer_percent=args.layer_percent,
            target_flops=args.target_flops, target_params=args.target_params,
            target_latency=args.target_latency / 1e3 if args.target_latency else None,
            target_speedup=args.target_speedup, latency_batch=args.latency_batch,
            latency_backend=args.latency_backend, refresh_latency_tables=args.refresh_latency_tables,
            max_layer_fraction=args.max_layer_fraction, min_channels=args.min_channels, round_to=args.round_to,
            target=args.target, fold_bias=fold, input_size=args.input_size, num_classes=args.num_classes,
            factory=args.factory, trust_pickle=args.trust_pickle, recalibrate=args.recalibrate, data=args.data,
            dataset=args.dataset, data_dir=args.data_dir, download=not args.no_download)
    return 0

"""``netslim run``: the whole method from a preset or a YAML config (train with sparsity -> prune ->
fine-tune, N passes), then its results table and plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..pipeline import list_presets, load_config, overridden, run_and_report
from .common import UsageError, named, positive_int


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("run", help="train with sparsity -> prune -> fine-tune (N passes) from a preset or YAML")
    p.add_argument("config", nargs="?", help="preset name (see --list) or a YAML file")
    p.add_argument("--list", action="store_true", help="list the presets")
    p.add_argument("--passes", type=positive_int)
    p.add_argument("--epochs", type=positive_int, help="override the epochs of every stage")
    p.add_argument("--device")
    p.add_argument("--cuda-graph", action="store_true", help="replay each training step as one CUDA graph (CUDA)")
    p.add_argument("--data-dir")
    p.add_argument("--out", help="run folder (default runs/<preset>)")
    p.add_argument("--no-resume", action="store_true",
                   help="start over even if --out holds a run (of this config or another): every stage is retrained")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.list:
        for name, description in list_presets().items():
            print(f"{name:<24} {description}")
        return 0
    if not args.config:
        raise UsageError("netslim run: give a preset name or a YAML config (netslim run --list shows the presets)")
    config = overridden(load_config(args.config), passes=args.passes, data_dir=args.data_dir, epochs=args.epochs,
                        device=args.device, cuda_graph=args.cuda_graph)
    out = named(args.out if args.out is not None else f"runs/{Path(args.config).stem}", "--out")
    run_and_report(config, out, config_file=args.config, progress=not args.no_progress, resume=not args.no_resume)
    return 0

"""``netslim finetune``: fine-tune a (pruned) checkpoint into a run folder."""

from __future__ import annotations

import argparse

from ..training_run import finetune_run
from .common import data_arguments, data_options, factory_options, named, train_config, train_options


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a (pruned) checkpoint")
    p.add_argument("checkpoint")
    factory_options(p)
    data_options(p, required=True)
    train_options(p)


def run(args: argparse.Namespace) -> int:
    finetune_run(args.checkpoint, train_config(args), named(args.out, "--out"), factory=args.factory,
                 trust_pickle=args.trust_pickle, resume=not args.no_resume, **data_arguments(args))
    return 0

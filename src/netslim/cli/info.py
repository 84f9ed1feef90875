"""``netslim info``: parameters, FLOPs and widths of a model or checkpoint."""

from __future__ import annotations

import argparse
import json

from ..model_info import model_info
from .common import factory_options, input_size, positive_int


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("info", help="parameters, FLOPs and widths of a model or checkpoint")
    p.add_argument("model", help="registered model name, package.module:factory, or a checkpoint file")
    p.add_argument("--num-classes", type=positive_int)
    p.add_argument("--input-size", type=input_size, help="e.g. 32 or 3,32,32")
    p.add_argument("--json", action="store_true")
    factory_options(p)


def run(args: argparse.Namespace) -> int:
    info = model_info(args.model, num_classes=args.num_classes, input_size=args.input_size, factory=args.factory,
                      trust_pickle=args.trust_pickle)
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{args.model}: {info['params']:,} parameters, {info['flops']:.4g} FLOPs at input {info['input_size']}")
        for name, width in info["widths"].items():
            print(f"  {name:<28} {width}")
    return 0

"""``netslim train``: train a model (with --sparsity: the paper's L1 on BN scales) into a run folder."""

from __future__ import annotations

import argparse

from ..sparsity import KINDS, SCHEDULES
from ..train import OPTIMIZERS, TrainConfig
from ..training_run import train_run
from .common import (
    UsageError,
    data_arguments,
    data_options,
    factory_options,
    named,
    non_negative,
    positive,
    positive_int,
    share,
    train_config,
    train_options,
)


def _lam_or_auto(text: str) -> float | str:
    """--sparsity: λ, or 'auto' (λ chosen by netslim for --target-sparsity)."""
    return "auto" if text.strip().lower() == "auto" else non_negative(text)


def add_parser(subparsers) -> None:
    defaults = TrainConfig()
    p = subparsers.add_parser("train", help="train a model (with --sparsity: the paper's L1 on BN scales)")
    p.add_argument("--model", help="a registered model name or package.module:factory (not with --from: the "
                   "checkpoint names its model)")
    p.add_argument("--num-classes", type=positive_int)
    p.add_argument("--sparsity", type=_lam_or_auto, default=defaults.sparsity, metavar="LAMBDA|auto",
                   help="λ of the L1 penalty on BN scales (paper Eq. 1), or auto: λ chosen and corrected during "
                        "training so that --target-sparsity of the channels become prunable")
    p.add_argument("--target-sparsity", type=share, metavar="SHARE",
                   help="with --sparsity auto (implied): the share of channels made prunable (|γ| < 1e-2) before "
                        f"the last third of the epochs (default {defaults.target_sparsity})")
    p.add_argument("--sparsity-kind", default=defaults.sparsity_kind, choices=KINDS)
    p.add_argument("--bn-init", type=positive, default=defaults.bn_init,
                   help="initial BN scale (the paper uses 0.5 with sparsity)")
    p.add_argument("--sparsity-schedule", default=defaults.sparsity_schedule, choices=SCHEDULES)
    p.add_argument("--bn-exclude", action="append", default=[], metavar="PATTERN",
                   help="module-path pattern of BNs left out of the penalty (repeatable), e.g. 'head.*'")
    p.add_argument("--optimizer", default=defaults.optimizer, choices=OPTIMIZERS,
                   help="adam/adamw use a proximal L1 step on γ after the optimizer step")
    p.add_argument("--grad-clip", type=positive, default=defaults.grad_clip,
                   help="clip the gradient norm (after the sparsity term)")
    p.add_argument("--pretrained", action="store_true", help="start from torchvision/timm released weights")
    p.add_argument("--from", dest="from_checkpoint", metavar="CKPT",
                   help="start from the weights of a trained netslim checkpoint")
    factory_options(p)
    data_options(p, required=True)
    train_options(p)


def run(args: argparse.Namespace) -> int:
    if args.model is None and args.from_checkpoint is None:
        raise UsageError("train: give --model NAME (a new model) or --from CKPT (the model of a checkpoint)")
    out = named(args.out, "--out")
    auto = args.sparsity == "auto" or args.target_sparsity is not None
    config = train_config(args, sparsity="auto" if auto else args.sparsity,
                          target_sparsity=args.target_sparsity or TrainConfig.target_sparsity,
                          sparsity_kind=args.sparsity_kind, bn_init=args.bn_init,
                          sparsity_schedule=args.sparsity_schedule, bn_exclude=tuple(args.bn_exclude),
                          optimizer=args.optimizer, grad_clip=args.grad_clip)
    model_kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    if args.pretrained:
        model_kwargs["pretrained"] = True
    train_run(config, out, model=args.model, start_from=args.from_checkpoint, model_kwargs=model_kwargs,
              factory=args.factory, trust_pickle=args.trust_pickle, resume=not args.no_resume, **data_arguments(args))
    return 0

"""``netslim export``: a checkpoint exported for deployment (ONNX, torch.export, AOTInductor, TorchScript)."""

from __future__ import annotations

import argparse

from ..deployment import DTYPES, TARGETS, target_defaults
from ..export import OPSETS
from ..export_checkpoint import export_checkpoint
from .common import claimed, factory_options, input_size, number, outputs, overwrite_option, positive_int


def add_parser(subparsers) -> None:
    gpu_round, cpu_round = target_defaults("gpu")["round_to"], target_defaults("cpu")["round_to"]
    p = subparsers.add_parser("export", help="deployment export: BN folded, target precision and layout; ONNX "
                              "(checked), torch.export program, AOTInductor package, TorchScript")
    p.add_argument("checkpoint")
    p.add_argument("--target", default="auto", choices=("auto", *TARGETS),
                   help="where the model will run (auto: gpu when this machine has CUDA); sets the defaults below")
    p.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                   help="weights and compute (auto: bf16 for gpu, fp32 for cpu; ONNX is always written in fp32)")
    p.add_argument("--memory-format", default="auto", choices=["auto", "contiguous", "channels_last"],
                   help="activation layout (auto: channels_last for gpu)")
    p.add_argument("--round-to", type=positive_int,
                   help=f"check that pruned widths are multiples of N (default {gpu_round} for gpu, {cpu_round} for "
                        "cpu); rounding "
                        "itself happens when pruning (netslim prune --round-to)")
    p.add_argument("--onnx", metavar="FILE", help="write an ONNX file (checked against PyTorch when onnxruntime is "
                   "installed)")
    p.add_argument("--program", metavar="FILE", help="write a torch.export program (.pt2; torch.export.load)")
    p.add_argument("--aoti", metavar="FILE", help="compile ahead of time with AOTInductor into a .pt2 package "
                   "(torch._inductor.aoti_load_package; needs a C++ compiler, and CUDA for a gpu target)")
    p.add_argument("--torchscript", metavar="FILE", help="write a traced TorchScript file (deprecated by PyTorch)")
    p.add_argument("--no-fold", action="store_true", help="keep the BatchNorm layers")
    lowest, highest = OPSETS[0], OPSETS[-1]
    p.add_argument("--opset", type=number(int, lambda v: v in OPSETS, f"is not an opset the ONNX exporter writes "
                                          f"({lowest} to {highest})"), default=17)
    overwrite_option(p)
    p.add_argument("--input-size", type=input_size, help="input size (C,H,W) for a model that does not declare "
                   "one (stored in checkpoints netslim writes once known)")
    factory_options(p)


def run(args: argparse.Namespace) -> int:
    files = outputs({"--onnx": args.onnx, "--program": args.program, "--aoti": args.aoti,
                     "--torchscript": args.torchscript}, {"checkpoint": args.checkpoint}, args.overwrite)
    with claimed(files):  # the run folders they lie in: no other process may own one meanwhile
        export_checkpoint(args.checkpoint, onnx=files["--onnx"], program=files["--program"], aoti=files["--aoti"],
                          torchscript=files["--torchscript"], target=args.target, dtype=args.dtype,
                          memory_format=args.memory_format, round_to=args.round_to, fold=not args.no_fold,
                          opset=args.opset, overwrite=args.overwrite, input_size=args.input_size,
                          factory=args.factory, trust_pickle=args.trust_pickle)
    return 0

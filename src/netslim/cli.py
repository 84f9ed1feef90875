"""The ``netslim`` command line: a thin shell that parses, validates and calls the library.

User errors (bad options, missing files, unfit checkpoints) print one line and exit with 2;
anything else is an internal error: one line, exit 3 (set NETSLIM_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import sys
import warnings
from pathlib import Path

from . import distributed
from .runfolder import check_folder, check_output, clean_stale, inside_run_folders, locked, refuse_overwriting_inputs

EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 3, 130


class UsageError(ValueError):
    """A problem with what the user asked for."""


def _number(convert, accept, rule: str):
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


_fraction = _number(float, lambda v: 0 <= v < 1, "is outside [0, 1) (e.g. 0.7 prunes 70%)")
_fraction_open = _number(float, lambda v: 0 < v <= 1, "is outside (0, 1] (e.g. 0.5 keeps half)")
_positive_int = _number(int, lambda v: v >= 1, "must be >= 1")
_non_negative = _number(float, lambda v: v >= 0, "must be >= 0")
_positive = _number(float, lambda v: v > 0, "must be > 0")
_seed = _number(int, lambda v: 0 <= v < 1 << 32, "is not a seed: give an integer in [0, 2**32)")
_share = _number(float, lambda v: 0 < v < 1, "must be a share in (0, 1), e.g. 0.5")


def _lam_or_auto(text: str) -> float | str:
    """--sparsity: λ, or 'auto' (λ chosen by netslim for --target-sparsity)."""
    return "auto" if text.strip().lower() == "auto" else _non_negative(text)


def _input_size(text: str) -> tuple[int, ...]:
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


class _HelpFormatter(argparse.HelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text + " (default: %(default)s)" if _has_default(action) and "%(default)" not in text else text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.help is None and _has_default(action):  # argparse shows no line for an option without help
            action.help = "(default: %(default)s)"
        return action

    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    from .deployment import DTYPES, TARGETS, target_defaults
    from .export import OPSETS
    from .plan import DEFAULT_PERCENT
    from .sparsity import KINDS, SCHEDULES
    from .timing import BACKENDS
    from .train import AMP_MODES, OPTIMIZERS, TrainConfig

    defaults = TrainConfig()  # the defaults argparse shows and uses are TrainConfig's own
    gpu_round, cpu_round = target_defaults("gpu")["round_to"], target_defaults("cpu")["round_to"]
    parser = _Parser(prog="netslim", description="Network slimming: sparsity training, pruning, fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def data_options(p, required=False):
        p.add_argument("--dataset", required=required, help="cifar10, cifar100, svhn, mnist, fashion-mnist, "
                       "imagenet or digits (embedded)")
        p.add_argument("--data-dir", help="where the dataset files are (or will be downloaded)")
        p.add_argument("--no-download", action="store_true", help="never download a missing dataset")
        p.add_argument("--val-size", type=int, default=0, help="hold out N training images for model selection")

    def factory_option(p):
        p.add_argument("--factory", metavar="MODULE:FUNCTION",
                       help="the package.module:function (or ultralytics:your.yaml) that built the checkpoint's "
                            "model: code or a config of your own named in a file runs only when you name it here")
        p.add_argument("--trust-pickle", action="store_true",
                       help="also accept another tool's pickled checkpoint (an Ultralytics .pt): loading it runs "
                            "code from the file, so only for files you trust")

    def overwrite_option(p):
        p.add_argument("--overwrite", action="store_true",
                       help="replace output files that exist (without it, an existing output is refused)")

    def train_options(p):
        p.add_argument("--epochs", type=_positive_int, default=defaults.epochs)
        p.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size)
        p.add_argument("--lr", type=_positive, default=defaults.lr)
        p.add_argument("--weight-decay", type=_non_negative, default=defaults.weight_decay)
        p.add_argument("--seed", type=_seed, default=defaults.seed)
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

    p = sub.add_parser("train", help="train a model (with --sparsity: the paper's L1 on BN scales)")
    p.add_argument("--model", help="a registered model name or package.module:factory (not with --from: the "
                   "checkpoint names its model)")
    p.add_argument("--num-classes", type=_positive_int)
    p.add_argument("--sparsity", type=_lam_or_auto, default=defaults.sparsity, metavar="LAMBDA|auto",
                   help="λ of the L1 penalty on BN scales (paper Eq. 1), or auto: λ chosen and corrected during "
                        "training so that --target-sparsity of the channels become prunable")
    p.add_argument("--target-sparsity", type=_share, metavar="SHARE",
                   help="with --sparsity auto (implied): the share of channels made prunable (|γ| < 1e-2) before "
                        f"the last third of the epochs (default {defaults.target_sparsity})")
    p.add_argument("--sparsity-kind", default=defaults.sparsity_kind, choices=KINDS)
    p.add_argument("--bn-init", type=_positive, default=defaults.bn_init,
                   help="initial BN scale (the paper uses 0.5 with sparsity)")
    p.add_argument("--sparsity-schedule", default=defaults.sparsity_schedule, choices=SCHEDULES)
    p.add_argument("--bn-exclude", action="append", default=[], metavar="PATTERN",
                   help="module-path pattern of BNs left out of the penalty (repeatable), e.g. 'head.*'")
    p.add_argument("--optimizer", default=defaults.optimizer, choices=OPTIMIZERS,
                   help="adam/adamw use a proximal L1 step on γ after the optimizer step")
    p.add_argument("--grad-clip", type=_positive, default=defaults.grad_clip,
                   help="clip the gradient norm (after the sparsity term)")
    p.add_argument("--pretrained", action="store_true", help="start from torchvision/timm released weights")
    p.add_argument("--from", dest="from_checkpoint", metavar="CKPT",
                   help="start from the weights of a trained netslim checkpoint")
    factory_option(p)
    data_options(p, required=True)
    train_options(p)

    p = sub.add_parser("prune", help="prune a trained checkpoint (or a model factory) into a compact model")
    p.add_argument("checkpoint", help="a netslim checkpoint, or package.module:factory / torchvision:NAME")
    amount = p.add_mutually_exclusive_group()  # one amount to prune
    amount.add_argument("--percent", type=_fraction,
                        help=f"global fraction of channels to prune (default {DEFAULT_PERCENT} when no other amount "
                             "is given)")
    amount.add_argument("--target-flops", type=_fraction_open,
                        help="prune until FLOPs <= this fraction of the original")
    amount.add_argument("--target-params", type=_fraction_open, help="prune until parameters <= this fraction")
    amount.add_argument("--target-latency", type=_positive, metavar="MS",
                        help="prune (in |γ| order) until the predicted latency on this machine is <= MS "
                             "milliseconds, from per-layer latency tables measured here (cached)")
    amount.add_argument("--target-speedup", type=_number(float, lambda v: v >= 1, "must be >= 1"), metavar="X",
                        help="prune until the predicted latency is the original's / X")
    p.add_argument("--latency-batch", type=_positive_int, default=1,
                   help="batch size the latency is planned and measured at")
    p.add_argument("--latency-backend", choices=BACKENDS, default="eager",
                   help="runtime the latency is planned and measured on: eager PyTorch, ONNX Runtime on the CPU, "
                        "or torch.compile (TorchInductor; each measured model is compiled first); in the --target's "
                        "format: fp32 on the CPU, bf16 channels_last on the GPU for a gpu target")
    p.add_argument("--refresh-latency-tables", action="store_true",
                   help="measure the latency tables again instead of reading them from the cache (they are checked "
                        "against the whole model measured now either way)")
    p.add_argument("--input-size", type=_input_size, help="input size (C,H,W) for models that do not declare one")
    p.add_argument("--num-classes", type=_positive_int, help="for a model factory")
    amount.add_argument("--layer-percent", type=_fraction, help="prune this fraction of every layer instead")
    p.add_argument("--max-layer-fraction", type=_fraction, help="prune at most this fraction of any layer")
    p.add_argument("--min-channels", type=_positive_int, default=1)
    p.add_argument("--round-to", type=_positive_int,
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
    p.add_argument("--recalibrate", type=_positive_int, metavar="N",
                   help="re-estimate BN statistics of the compact model on N training batches (of --dataset, or "
                        "of --data for an Ultralytics model)")
    p.add_argument("--data", metavar="DATA.YAML",
                   help="an Ultralytics dataset yaml: --recalibrate reads its training images with Ultralytics' "
                        "own loader")
    factory_option(p)
    data_options(p)

    p = sub.add_parser("finetune", help="fine-tune a (pruned) checkpoint")
    p.add_argument("checkpoint")
    factory_option(p)
    data_options(p, required=True)
    train_options(p)

    p = sub.add_parser("run", help="train with sparsity -> prune -> fine-tune (N passes) from a preset or YAML")
    p.add_argument("config", nargs="?", help="preset name (see --list) or a YAML file")
    p.add_argument("--list", action="store_true", help="list the presets")
    p.add_argument("--passes", type=_positive_int)
    p.add_argument("--epochs", type=_positive_int, help="override the epochs of every stage")
    p.add_argument("--device")
    p.add_argument("--cuda-graph", action="store_true", help="replay each training step as one CUDA graph (CUDA)")
    p.add_argument("--data-dir")
    p.add_argument("--out", help="run folder (default runs/<preset>)")
    p.add_argument("--no-resume", action="store_true",
                   help="start over even if --out holds a run (of this config or another): every stage is retrained")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("info", help="parameters, FLOPs and widths of a model or checkpoint")
    p.add_argument("model", help="registered model name, package.module:factory, or a checkpoint file")
    p.add_argument("--num-classes", type=_positive_int)
    p.add_argument("--input-size", type=_input_size, help="e.g. 32 or 3,32,32")
    p.add_argument("--json", action="store_true")
    factory_option(p)

    p = sub.add_parser("export", help="deployment export: BN folded, target precision and layout; ONNX (checked), "
                       "torch.export program, AOTInductor package, TorchScript")
    p.add_argument("checkpoint")
    p.add_argument("--target", default="auto", choices=("auto", *TARGETS),
                   help="where the model will run (auto: gpu when this machine has CUDA); sets the defaults below")
    p.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                   help="weights and compute (auto: bf16 for gpu, fp32 for cpu; ONNX is always written in fp32)")
    p.add_argument("--memory-format", default="auto", choices=["auto", "contiguous", "channels_last"],
                   help="activation layout (auto: channels_last for gpu)")
    p.add_argument("--round-to", type=_positive_int,
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
    p.add_argument("--opset", type=_number(int, lambda v: v in OPSETS, f"is not an opset the ONNX exporter writes "
                                           f"({lowest} to {highest})"), default=17)
    overwrite_option(p)
    p.add_argument("--input-size", type=_input_size, help="input size (C,H,W) for a model that does not declare "
                   "one (stored in checkpoints netslim writes once known)")
    factory_option(p)

    p = sub.add_parser("report", help="plots of a run folder (γ distribution, widths, γ along training)")
    p.add_argument("run_dir")
    return parser


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each ("netslim: warning: ..."), not a source path and a line of code."""
    print(f"netslim: warning: {_one_line(message) if isinstance(message, BaseException) else message}",
          file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    # A model factory of your own (--model mypkg.models:resnet50) is found in the working directory, as with
    # `python -m`; appended, so that an installed package is never shadowed by a folder of the same name.
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.append(here)
    shown = warnings.showwarning
    warnings.showwarning = _warning_line
    try:
        return _main(argv)
    finally:
        warnings.showwarning = shown
        if added and here in sys.path:
            sys.path.remove(here)


def _main(argv: list[str] | None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help
            return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
        try:
            code = COMMANDS[args.command](args) or 0
            sys.stdout.flush()
            return code
        except SystemExit as e:  # code the user named (a model factory) tried to end the process
            raise UsageError(f"{args.command} was stopped by code it ran calling sys.exit({e.code!r}) (a model "
                             "factory?); nothing was finished") from None
    except KeyboardInterrupt:
        print("netslim: interrupted; the checkpoint of the last finished epoch (if any) is kept: run the same "
              "command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`| head`): stop writing, say it once on stderr
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("netslim: error: the output pipe was closed before everything was written", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, ValueError, FileNotFoundError, PermissionError, ImportError) as e:
        print(f"netslim: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.EROFS):
            return _internal(e)
        full = e.errno == errno.ENOSPC and "disk is full" not in str(e)
        print(f"netslim: error: {'the disk is full: ' if full else ''}{_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # an internal error: say so in one line, keep the traceback for debugging
        return _internal(e)


def _internal(e: BaseException) -> int:
    if os.environ.get("NETSLIM_DEBUG"):
        raise e
    print(f"netslim: internal error: {type(e).__name__}: {_one_line(e)} (set NETSLIM_DEBUG=1 for details)",
          file=sys.stderr)
    return EXIT_INTERNAL


def _one_line(e: BaseException) -> str:
    """The first line of the message, and the notes added on the way out (what a failed write kept)."""
    text = str(e).strip() or type(e).__name__
    return "; ".join([text.splitlines()[0], *getattr(e, "__notes__", ())])


def _named(path: str | None, option: str) -> str:
    if path is None or not path.strip():
        raise UsageError(f"{option} is empty: give a {'folder' if option == '--out' else 'file'} name")
    return path


def _writable_dir(path: str, option: str = "--out") -> Path:
    """An output folder that can be made and written: checked, not created (a refused command leaves nothing)."""
    return check_folder(_named(path, option), option)


def _outputs(given: dict[str, str | None], inputs: dict[str, str | None], overwrite: bool) -> dict[str, Path | None]:
    """The output files named by options, each a new path or (with --overwrite) a regular file, none an input."""
    named = {option: _named(path, option) for option, path in given.items() if path is not None}
    refuse_overwriting_inputs(named, inputs)
    return {option: check_output(path, overwrite, option) if path is not None else None
            for option, path in given.items()}


def _claimed(outputs: dict[str, Path | None]) -> contextlib.AbstractContextManager:
    """Hold, for the command, the run folders the outputs lie in (see :func:`netslim.runfolder.inside_run_folders`)."""
    return inside_run_folders(*(path.parent for path in outputs.values() if path is not None))


# -- commands --

def cmd_train(args) -> int:
    import torch

    from .checkpoint import describe, load_model
    from .data import make_loaders
    from .pipeline import ExperimentConfig, build_model_for, check_model_fits
    from .train import TrainConfig, epoch_line, resolve_device, train

    if args.model is None and args.from_checkpoint is None:
        raise UsageError("train: give --model NAME (a new model) or --from CKPT (the model of a checkpoint)")
    info = distributed.init_from_env(args.device)
    out = _writable_dir(args.out)
    resolve_device(args.device)  # before the folder is made
    if args.from_checkpoint:
        _refuse_reading_what_training_writes(args.from_checkpoint, "--from", out)
    auto = args.sparsity == "auto" or args.target_sparsity is not None
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         sparsity="auto" if auto else args.sparsity,
                         target_sparsity=args.target_sparsity or TrainConfig.target_sparsity,
                         sparsity_kind=args.sparsity_kind, bn_init=args.bn_init,
                         sparsity_schedule=args.sparsity_schedule, bn_exclude=tuple(args.bn_exclude),
                         optimizer=args.optimizer, grad_clip=args.grad_clip, seed=args.seed, device=args.device,
                         progress=not args.no_progress, sync_bn=args.sync_bn, amp=args.amp, compile=args.compile,
                         cuda_graph=args.cuda_graph)
    model_kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    if args.pretrained:
        model_kwargs["pretrained"] = True
    experiment = ExperimentConfig(model=args.model or args.from_checkpoint, dataset=args.dataset,
                                  data_dir=args.data_dir, download=not args.no_download, val_size=args.val_size,
                                  model_kwargs=model_kwargs)
    with _owning(out, info):  # a second run into the same folder stops here, before loading anything
        loader, val, test, train_set = make_loaders(experiment, args.batch_size, resolve_device(args.device),
                                                    args.seed)
        torch.manual_seed(args.seed)  # the same initial weights on every run, rank and resume
        if args.from_checkpoint:
            model, data = load_model(args.from_checkpoint, factory=args.factory, trust_pickle=args.trust_pickle)
            if args.model is not None and args.model != data["arch"]["name"]:
                raise UsageError(f"--model {args.model}: {args.from_checkpoint} holds a {data['arch']['name']} "
                                 "(--from takes the model from the checkpoint: drop --model)")
            check_model_fits(model, train_set, args.from_checkpoint, args.dataset)
            arch = describe(model, data["arch"]["name"], data["arch"].get("kwargs", {}))
        else:
            model, kwargs = build_model_for(experiment, train_set)
            arch = describe(model, args.model, kwargs)
        result = train(model, loader, config, val_loader=val, test_loader=test, out_dir=out, arch=arch,
                       resume=not args.no_resume, on_epoch=lambda r: print(epoch_line(r)), log=print)
    final = result["final"]
    if info.is_main:
        print(f"done: test accuracy {100 * final.get('test_accuracy', float('nan')):.2f}% after {final.get('epoch')} "
              f"epochs; checkpoints in {out} (last.pt, best.pt), metrics in {out / 'metrics.jsonl'}")
    return 0


def _owning(out: Path, info) -> contextlib.AbstractContextManager:
    """The run folder's lock (rank 0 alone writes, so it alone locks under torchrun)."""
    return locked(out) if info.is_main else contextlib.nullcontext()


def _refuse_reading_what_training_writes(path: str, option: str, out: Path) -> None:
    """Training rewrites last.pt, best.pt and metrics.jsonl in its folder: an input there would be lost."""
    written = {f"--out ({name})": out / name for name in ("last.pt", "best.pt", "metrics.jsonl")}
    refuse_overwriting_inputs(written, {option: path}, advice="give another --out, or copy the checkpoint out of it")


def cmd_prune(args) -> int:
    fold = _fold_mode(args)
    outputs = _outputs({"--out": args.out, "--plan-out": args.plan_out, "--ultralytics-out": args.ultralytics_out},
                       {"checkpoint": args.checkpoint if Path(args.checkpoint).exists() else None}, args.overwrite)
    with _claimed(outputs):  # the run folders they lie in: no other process may own one meanwhile
        return _prune(args, fold, *outputs.values())


def _prune(args, fold, out: Path, plan_out: Path | None, yolo_out: Path | None) -> int:
    import torch

    from . import models
    from .checkpoint import describe, load_model, save_checkpoint
    from .metrics import count_flops, count_params
    from .models import create_model
    from .pruning import plan_for
    from .surgery import apply_plan, fold_report

    if Path(args.checkpoint).is_file() or (":" not in args.checkpoint and args.checkpoint not in models.names()):
        model, data = load_model(args.checkpoint, factory=args.factory, trust_pickle=args.trust_pickle)
        arch = dict(data["arch"])
    else:  # a model factory: its own (e.g. pretrained) weights
        kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
        model = create_model(args.checkpoint, kwargs)
        arch = describe(model, args.checkpoint, kwargs)
    model.input_size = _input_of(model, _full_size(model, args.input_size), args.checkpoint)
    model.eval()
    if yolo_out is not None and not type(model).__module__.startswith("ultralytics."):
        raise UsageError(f"--ultralytics-out: {args.checkpoint} is not an Ultralytics model")
    if args.recalibrate and not (args.dataset or args.data):
        raise UsageError("--recalibrate needs the training batches to re-estimate BN statistics on: --dataset NAME, "
                         "or --data data.yaml for an Ultralytics model")
    if args.data is not None:
        if not type(model).__module__.startswith("ultralytics."):
            raise UsageError(f"--data: {args.checkpoint} is not an Ultralytics model; use --dataset")
        if not Path(args.data).is_file():
            raise UsageError(f"--data: {args.data} does not exist (an Ultralytics dataset yaml)")
    example = torch.zeros(2, *model.input_size)
    by_latency = args.target_latency is not None or args.target_speedup is not None
    from .deployment import resolve_target
    from .timing import timing_input as deployed_input
    # in the deployment's format: bf16 channels_last on CUDA for a gpu target, fp32 on the CPU otherwise
    timing_input = deployed_input(model.input_size, args.latency_batch, resolve_target(args.target),
                                  args.latency_backend) if by_latency else None
    planned = plan_for(model, example, percent=args.percent, layer_percent=args.layer_percent,
                       target_flops=args.target_flops, target_params=args.target_params,
                       target_latency=args.target_latency / 1e3 if args.target_latency else None,
                       target_speedup=args.target_speedup, timing_input=timing_input,
                       max_layer_fraction=args.max_layer_fraction, min_channels=args.min_channels,
                       round_to=args.round_to, target=args.target, latency_backend=args.latency_backend,
                       refresh_tables=args.refresh_latency_tables)
    plan = planned.plan
    if planned.round_to > 1:
        why = "the latency tables show layers stepping by such blocks here" if by_latency and not args.round_to \
            else f"target {planned.target}"
        print(f"channel counts rounded to multiples of {planned.round_to} ({why}; --round-to 1 prunes exactly "
              "the percent asked)")
    compact = apply_plan(model, plan, fold_bias=fold, example_input=example)
    folds = list(fold_report(model, plan, fold_bias=fold, example_input=example).values())
    if folds:
        carried = sum(compact.get_submodule(path).num_features - len(kept) for path, kept in plan.kept.items())
        print(f"β of pruned channels: folded exactly into {folds.count('exact')} layer(s), approximately (at the "
              f"border) into {folds.count('approximate')}, carried exactly into {folds.count('carrier')} (by "
              f"{carried} channel(s) kept as constants), dropped at {folds.count('dropped')}")
    print(f"{'layer':<28} {'before':>7} {'after':>7}  guard")
    for path, report in plan.layers.items():
        print(f"{path:<28} {report.width:>7} {report.kept:>7}  {report.guard}")
    size = model.input_size
    p0, p1, f0, f1 = count_params(model), count_params(compact), count_flops(model, size), count_flops(compact, size)
    collapsed = [p for p, r in plan.layers.items() if r.guard == "collapsed"]
    if collapsed:
        print(f"warning: every |γ| of {len(collapsed)} layer(s) is ~0 ({', '.join(collapsed[:3])}...): λ was too "
              "strong for them; the guard keeps min_channels there")
    ranking = plan.options.get("ranking", "|γ|")
    print(f"channels pruned: {plan.pruned_channels}/{plan.total_channels} ({100 * plan.achieved_percent:.1f}%), "
          + (f"threshold |γ| = {plan.threshold:.4g}" if ranking == "|γ|" else
             f"ranked by {ranking} (kept the most Σ|γ| within the latency; smallest |γ| first in each layer)"))
    print(f"params: {p0:,} -> {p1:,} ({100 * (1 - p1 / p0):.1f}% pruned); "
          f"FLOPs: {f0:.3g} -> {f1:.3g} ({100 * (1 - f1 / f0):.1f}% pruned)")
    if by_latency:
        from .timing import RUNTIME_NAMES, speed_check
        check = speed_check(model, compact, timing_input, backend=args.latency_backend)
        on = "" if args.latency_backend == "eager" else f" with {RUNTIME_NAMES[args.latency_backend]}"
        if timing_input.is_cuda:
            on += f" on {torch.cuda.get_device_name(timing_input.device)} ({str(timing_input.dtype).split('.')[-1]})"
        for k, step in enumerate(plan.options.get("rounds", []), 1):
            print(f"  planning round {k}: goal {1e3 * step['goal_seconds']:.3g} ms, predicted "
                  f"{1e3 * step['predicted_seconds']:.3g} ms, measured {1e3 * step['measured_seconds']:.3g} ms"
                  + (f" (median of {step['timings']} timings)" if step.get("timings", 1) > 1 else "")
                  + f" (ranked by {step['ranking']})")
        print(f"latency at batch {args.latency_batch}{on}: predicted "
              f"{1e3 * planned.predicted_latency:.3g} ms; {check.line()}")
        budget = args.target_latency / 1e3 if args.target_latency else check.original / args.target_speedup
        if warning := check.missed(budget, args.latency_batch):
            print(warning)
    if args.data is not None and args.recalibrate:
        from .integrations.ultralytics import recalibrate_yolo
        recalibrate_yolo(compact, args.data, args.recalibrate, imgsz=model.input_size[-1])
        print(f"BN statistics re-estimated on {compact.recalibrated_batches} batches of {args.data}")
    if args.dataset:
        from .data import DEFAULT_AUGMENT, Loader, load_dataset
        from .train import evaluate, recalibrate_bn
        test = Loader(load_dataset(args.dataset, args.data_dir, "test", not args.no_download), 1000, train=False)
        before, after = evaluate(model, test)["accuracy"], evaluate(compact, test)["accuracy"]
        print(f"test accuracy: {100 * before:.2f}% before, {100 * after:.2f}% right after pruning (before fine-tuning)")
        if args.recalibrate:
            train_set = load_dataset(args.dataset, args.data_dir, "train", not args.no_download)
            augment = DEFAULT_AUGMENT.get(args.dataset, "none")
            recalibrate_bn(compact, Loader(train_set, 64, train=True, augment=augment), args.recalibrate)
            print(f"test accuracy after re-estimating BN statistics on {compact.recalibrated_batches} batches: "
                  f"{100 * evaluate(compact, test)['accuracy']:.2f}%")
    from .checkpoint import layer_shapes
    arch["shapes"], arch["input_size"] = layer_shapes(compact), list(model.input_size)
    if plan_out is not None:  # first: a plan without its model harms less than a model without its plan
        plan.save(plan_out, overwrite=args.overwrite)
    clean_stale(out)  # what a killed writer of this name left
    save_checkpoint(out, {"arch": arch, "state_dict": compact.state_dict(), "plan": plan.to_dict()})
    if yolo_out is not None:
        from .integrations.ultralytics import save_yolo
        print(f"Ultralytics checkpoint of the compact model: {save_yolo(compact, yolo_out, overwrite=args.overwrite)} "
              "(fine-tune it with netslim.integrations.ultralytics.finetune_yolo)")
    print(f"compact model saved to {out}" + (f", plan to {plan_out}" if plan_out is not None else ""))
    return 0


def _fold_mode(args) -> bool | str:
    """--fold, or the older single flags (one of them at most)."""
    given = [m for m, on in (("none", args.no_fold), ("approximate", args.approximate_fold), (args.fold, args.fold))
             if on]
    if len(set(given)) > 1:
        raise UsageError("give one of --fold, --no-fold and --approximate-fold")
    mode = given[0] if given else "exact"
    return False if mode == "none" else mode


def cmd_finetune(args) -> int:
    from .checkpoint import load_model
    from .data import make_loaders
    from .pipeline import ExperimentConfig, check_model_fits
    from .train import TrainConfig, epoch_line, resolve_device, train

    info = distributed.init_from_env(args.device)
    out = _writable_dir(args.out)
    resolve_device(args.device)  # before the folder is made
    _refuse_reading_what_training_writes(args.checkpoint, "checkpoint", out)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         seed=args.seed, device=args.device, progress=not args.no_progress, sync_bn=args.sync_bn,
                         amp=args.amp, compile=args.compile, cuda_graph=args.cuda_graph)
    with _owning(out, info):
        model, data = load_model(args.checkpoint, factory=args.factory, trust_pickle=args.trust_pickle)
        experiment = ExperimentConfig(model=data["arch"]["name"], dataset=args.dataset, data_dir=args.data_dir,
                                      download=not args.no_download, val_size=args.val_size)
        loader, val, test, train_set = make_loaders(experiment, args.batch_size, resolve_device(args.device),
                                                    args.seed)
        check_model_fits(model, train_set, args.checkpoint, args.dataset)
        result = train(model, loader, config, val_loader=val, test_loader=test, out_dir=out, arch=data["arch"],
                       resume=not args.no_resume, on_epoch=lambda r: print(epoch_line(r)), log=print)
    if info.is_main:
        print(f"done: test accuracy {100 * result['final'].get('test_accuracy', float('nan')):.2f}%; "
              f"checkpoints in {out}")
    return 0
def cmd_run(args) -> int:
    from .pipeline import list_presets, load_config, overridden, run_experiment

    if args.list:
        for name, description in list_presets().items():
            print(f"{name:<24} {description}")
        return 0
    if not args.config:
        raise UsageError("netslim run: give a preset name or a YAML config (netslim run --list shows the presets)")
    config = overridden(load_config(args.config), passes=args.passes, data_dir=args.data_dir, epochs=args.epochs,
                        device=args.device, cuda_graph=args.cuda_graph)
    distributed.init_from_env(config.train.get("device", "auto"))
    out = _writable_dir(args.out if args.out is not None else f"runs/{Path(args.config).stem}")
    written = {f"--out ({name})": out / name for name in ("results.md", "results.json", "config.yaml")}
    refuse_overwriting_inputs(written, {"config": args.config}, advice="give another --out")
    for option, path in written.items():  # the run's own files: replaced, but never through a link
        check_output(path, overwrite=True, option=option)
    run_experiment(config, out, progress=not args.no_progress, resume=not args.no_resume)
    if not distributed.current().is_main:
        return 0
    print()
    print((out / "results.md").read_text())
    print(f"results: {out / 'results.md'}, {out / 'results.json'}")
    try:
        from .report import write_report
        print(f"plots: {out / 'report'} ({len(write_report(out))} PNGs)")
    except ImportError as e:
        print(f"plots skipped: {e}")
    return 0


def cmd_info(args) -> int:
    from .checkpoint import load_model
    from .layers import batch_norms
    from .metrics import count_flops, count_params
    from .models import create_model

    path = Path(args.model)
    if path.is_file():
        model, _ = load_model(path, factory=args.factory, trust_pickle=args.trust_pickle)
    elif args.model.endswith((".pt", ".pth")):
        raise UsageError(f"checkpoint {path} does not exist")
    else:
        kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
        model = create_model(args.model, kwargs)
    size = _input_of(model, _full_size(model, args.input_size), args.model)
    widths = {n: m.num_features for n, m in batch_norms(model).items()}
    info = {"model": args.model, "params": count_params(model), "flops": count_flops(model, size),
            "input_size": list(size), "widths": widths}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{args.model}: {info['params']:,} parameters, {info['flops']:.4g} FLOPs at input {info['input_size']}")
        for name, width in widths.items():
            print(f"  {name:<28} {width}")
    return 0


def _full_size(model, size: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """``--input-size 32`` means the model's channels at 32x32 (3 channels when it declares nothing)."""
    if size is None or len(size) > 1:
        return size
    base = getattr(model, "input_size", None) or (3, size[0], size[0])
    return (base[0], *([size[0]] * (len(base) - 1)))


def _input_of(model, size: tuple[int, ...] | None, what: str) -> tuple[int, ...]:
    """The input size to use for ``model`` (``size`` if given, else the one it declares), checked by running it."""
    import torch

    from .layers import device_of, evaluating

    declared = getattr(model, "input_size", None)
    size = tuple(size) if size is not None else (tuple(declared) if declared is not None else None)
    if size is None:
        raise UsageError(f"{what} does not declare its input size: pass --input-size C,H,W")
    try:
        with evaluating(model), torch.no_grad():
            model(torch.zeros(2, *size, device=device_of(model)))
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        built = f" (it was built for {tuple(declared)})" if declared is not None and tuple(declared) != size else ""
        raise UsageError(f"{what} cannot take an input of size {','.join(map(str, size))}{built}: "
                         f"{_one_line(e)}") from None
    return size


def cmd_export(args) -> int:
    if all(x is None for x in (args.onnx, args.program, args.aoti, args.torchscript)):
        raise UsageError("give at least one of --onnx FILE, --program FILE, --aoti FILE, --torchscript FILE")
    outputs = _outputs({"--onnx": args.onnx, "--program": args.program, "--aoti": args.aoti,
                        "--torchscript": args.torchscript}, {"checkpoint": args.checkpoint}, args.overwrite)
    with _claimed(outputs):  # the run folders they lie in: no other process may own one meanwhile
        return _export(args, outputs)


def _export(args, outputs: dict[str, Path | None]) -> int:
    import importlib.util

    import torch

    from .checkpoint import load_model
    from .deployment import (
        DTYPES,
        export_aoti,
        export_program,
        export_torchscript,
        misaligned_widths,
        resolve_target,
        target_defaults,
    )
    from .export import export_onnx

    target = resolve_target(args.target)
    defaults = target_defaults(target)
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else defaults["dtype"]
    channels_last = defaults["channels_last"] if args.memory_format == "auto" else args.memory_format == "channels_last"
    device = "cuda" if target == "gpu" and torch.cuda.is_available() else "cpu"
    if args.aoti and target == "gpu" and device != "cuda":
        raise UsageError("--aoti for a gpu target compiles CUDA kernels and needs a CUDA GPU on this machine; "
                         "run the export there, or write --program instead")
    model, data = load_model(args.checkpoint, factory=args.factory, trust_pickle=args.trust_pickle)
    if args.onnx is not None:  # before any artifact is written
        if importlib.util.find_spec("onnx") is None:
            raise UsageError("--onnx needs the onnx package: pip install onnx onnxruntime (or pip install "
                             "'netslim[export]'); onnxruntime checks the file against PyTorch")
    model.input_size = size = _input_of(model, _full_size(model, args.input_size), args.checkpoint)
    model.eval()
    if data["arch"].get("shapes") and device == ("cuda" if target == "gpu" else "cpu"):
        # never slower: the compact model against the original, on this machine, deployed as exported
        from .timing import RUNTIME_NAMES, original_of, speed_check, timing_input
        original = original_of(data["arch"], factory=args.factory)
        if original is not None:
            # on the runtime the file is for: ONNX Runtime for an ONNX export (CPU), where it is installed
            runtime = "onnxruntime" if args.onnx and target == "cpu" and importlib.util.find_spec("onnxruntime") \
                else "eager"
            x = timing_input(size, 1, target, runtime)
            check = speed_check(original, model, x, backend=runtime)
            print(f"on this machine ({x.device.type}, {str(x.dtype).split('.')[-1]}, batch 1, "
                  f"{RUNTIME_NAMES[runtime]}): {check.line()}")
    round_to = args.round_to or defaults["round_to"]
    odd = misaligned_widths(model, round_to, torch.zeros(2, *size))
    if odd:
        listed = ", ".join(f"{k} {v}" for k, v in list(odd.items())[:4]) + (", ..." if len(odd) > 4 else "")
        print(f"warning: {len(odd)} layer widths are not multiples of {round_to} ({listed}): slower on tensor "
              f"cores; prune with --round-to {round_to} (before fine-tuning) to fix")
    dtype_name = next(k for k, v in DTYPES.items() if v == dtype)
    print(f"export for {target}: BN {'kept' if args.no_fold else 'folded'}, {dtype_name}, "
          f"{'channels_last' if channels_last else 'contiguous'}")
    options = dict(device=device, dtype=dtype, channels_last=channels_last, fold=not args.no_fold,
                   overwrite=args.overwrite)
    if args.onnx:
        path = export_onnx(model, outputs["--onnx"], size, fold=not args.no_fold, opset=args.opset,
                           overwrite=args.overwrite)
        print(f"ONNX model (fp32) written to {path}")
    if args.program:
        path = export_program(model, outputs["--program"], **options)
        print(f"torch.export program written to {path} (load: torch.export.load(path).module())")
    if args.aoti:
        path = export_aoti(model, outputs["--aoti"], **options)
        print(f"AOTInductor package written to {path} (load: torch._inductor.aoti_load_package(path))")
    if args.torchscript:
        path = export_torchscript(model, outputs["--torchscript"], **options)
        print(f"TorchScript model written to {path}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    paths = write_report(Path(args.run_dir))
    for p in paths:
        print(p)
    return 0


COMMANDS = {"train": cmd_train, "prune": cmd_prune, "finetune": cmd_finetune, "run": cmd_run, "info": cmd_info,
            "export": cmd_export, "report": cmd_report}

if __name__ == "__main__":
    sys.exit(main())

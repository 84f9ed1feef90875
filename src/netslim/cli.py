"""The ``netslim`` command line: a thin shell that parses, validates and calls the library.

User errors (bad options, missing files, unfit checkpoints) print one line and exit with 2;
anything else is an internal error: one line, exit 3 (set NETSLIM_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path

from . import distributed

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


def _input_size(text: str) -> tuple[int, ...]:
    try:
        size = tuple(int(s) for s in text.lower().replace("x", ",").split(",") if s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 32 or 3,32,32") from None
    if not size or any(s < 1 for s in size):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 32 or 3,32,32")
    return size


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
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
                       help="the package.module:function that built the checkpoint's model: a factory named in a "
                            "file runs only when you name it here")

    def train_options(p, epochs):
        p.add_argument("--epochs", type=_positive_int, default=epochs)
        p.add_argument("--batch-size", type=_positive_int, default=64)
        p.add_argument("--lr", type=_positive, default=0.1)
        p.add_argument("--weight-decay", type=_non_negative, default=1e-4)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
        p.add_argument("--out", required=True, help="run folder (created; an existing run there is resumed)")
        p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
        p.add_argument("--no-progress", action="store_true")
        p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across torchrun processes (CUDA)")
        p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                       help="mixed precision (auto: bf16 on CUDA, off on CPU)")
        p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA graphs on GPU)")
        p.add_argument("--cuda-graph", action="store_true",
                       help="capture the whole training step as one CUDA graph and replay it (CUDA; the last "
                            "partial batch of each epoch runs eagerly)")

    p = sub.add_parser("train", help="train a model (with --sparsity: the paper's L1 on BN scales)")
    p.add_argument("--model", required=True, help="a registered model name or package.module:factory")
    p.add_argument("--num-classes", type=_positive_int)
    p.add_argument("--sparsity", type=_non_negative, default=0.0, help="λ of the L1 penalty on BN scales")
    p.add_argument("--sparsity-kind", default="l1", choices=["l1", "smooth_l1", "polarization"])
    p.add_argument("--bn-init", type=float, help="initial BN scale (the paper uses 0.5 with sparsity)")
    p.add_argument("--sparsity-schedule", default="constant", choices=["constant", "warmup", "step", "linear"])
    p.add_argument("--bn-exclude", action="append", default=[], metavar="PATTERN",
                   help="module-path pattern of BNs left out of the penalty (repeatable), e.g. 'head.*'")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"],
                   help="adam/adamw use a proximal L1 step on γ after the optimizer step")
    p.add_argument("--grad-clip", type=_positive, help="clip the gradient norm (after the sparsity term)")
    p.add_argument("--pretrained", action="store_true", help="start from torchvision/timm released weights")
    p.add_argument("--from", dest="from_checkpoint", metavar="CKPT",
                   help="start from the weights of a trained netslim checkpoint")
    factory_option(p)
    data_options(p, required=True)
    train_options(p, 160)

    p = sub.add_parser("prune", help="prune a trained checkpoint (or a model factory) into a compact model")
    p.add_argument("checkpoint", help="a netslim checkpoint, or package.module:factory / torchvision:NAME")
    p.add_argument("--percent", type=_fraction, help="global fraction of channels to prune (default 0.7)")
    p.add_argument("--target-flops", type=_fraction_open, help="prune until FLOPs <= this fraction of the original")
    p.add_argument("--target-params", type=_fraction_open, help="prune until parameters <= this fraction")
    p.add_argument("--input-size", type=_input_size, help="input size (C,H,W) for models that do not declare one")
    p.add_argument("--num-classes", type=_positive_int, help="for a model factory")
    p.add_argument("--layer-percent", type=_fraction, help="prune this fraction of every layer instead")
    p.add_argument("--max-layer-fraction", type=_fraction, help="prune at most this fraction of any layer")
    p.add_argument("--min-channels", type=_positive_int, default=1)
    p.add_argument("--round-to", type=_positive_int,
                   help="keep channel counts multiples of N, keeping the next-largest |γ| (default: 8 for a gpu "
                        "target, for tensor cores; 1 for cpu: exactly the percent asked)")
    p.add_argument("--target", default="auto", choices=["auto", "cpu", "gpu"],
                   help="where the compact model will run (auto: gpu when this machine has CUDA)")
    p.add_argument("--no-fold", action="store_true", help="drop pruned channels' β instead of folding it")
    p.add_argument("--out", required=True, help="file for the compact checkpoint (.pt)")
    p.add_argument("--plan-out", help="also write the plan as JSON here")
    p.add_argument("--recalibrate", type=_positive_int, metavar="N",
                   help="re-estimate BN statistics of the compact model on N training batches (needs --dataset)")
    factory_option(p)
    data_options(p)

    p = sub.add_parser("finetune", help="fine-tune a (pruned) checkpoint")
    p.add_argument("checkpoint")
    factory_option(p)
    data_options(p, required=True)
    train_options(p, 160)

    p = sub.add_parser("run", help="train with sparsity -> prune -> fine-tune (N passes) from a preset or YAML")
    p.add_argument("config", nargs="?", help="preset name (see --list) or a YAML file")
    p.add_argument("--list", action="store_true", help="list the presets")
    p.add_argument("--passes", type=_positive_int)
    p.add_argument("--epochs", type=_positive_int, help="override the epochs of every stage")
    p.add_argument("--device")
    p.add_argument("--cuda-graph", action="store_true", help="replay each training step as one CUDA graph (CUDA)")
    p.add_argument("--data-dir")
    p.add_argument("--out", help="run folder (default runs/<preset>)")
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
    p.add_argument("--target", default="auto", choices=["auto", "cpu", "gpu"],
                   help="where the model will run (auto: gpu when this machine has CUDA); sets the defaults below")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="weights and compute (auto: bf16 for gpu, fp32 for cpu; ONNX is always written in fp32)")
    p.add_argument("--memory-format", default="auto", choices=["auto", "contiguous", "channels_last"],
                   help="activation layout (auto: channels_last for gpu)")
    p.add_argument("--round-to", type=_positive_int,
                   help="check that pruned widths are multiples of N (default 8 for gpu, 1 for cpu); rounding "
                        "itself happens when pruning (netslim prune --round-to)")
    p.add_argument("--onnx", metavar="FILE", help="write an ONNX file (checked against PyTorch when onnxruntime is "
                   "installed)")
    p.add_argument("--program", metavar="FILE", help="write a torch.export program (.pt2; torch.export.load)")
    p.add_argument("--aoti", metavar="FILE", help="compile ahead of time with AOTInductor into a .pt2 package "
                   "(torch._inductor.aoti_load_package; needs a C++ compiler, and CUDA for a gpu target)")
    p.add_argument("--torchscript", metavar="FILE", help="write a traced TorchScript file (deprecated by PyTorch)")
    p.add_argument("--no-fold", action="store_true", help="keep the BatchNorm layers")
    p.add_argument("--opset", type=_positive_int, default=17)
    factory_option(p)

    p = sub.add_parser("report", help="plots of a run folder (γ distribution, widths, γ along training)")
    p.add_argument("run_dir")
    return parser


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each ("netslim: warning: ..."), not a source path and a line of code."""
    print(f"netslim: warning: {_one_line(message) if isinstance(message, BaseException) else message}",
          file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    shown = warnings.showwarning
    warnings.showwarning = _warning_line
    try:
        return _main(argv)
    finally:
        warnings.showwarning = shown


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print("netslim: interrupted; the last epoch's checkpoint is kept: run the same command again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except (UsageError, ValueError, FileNotFoundError, PermissionError, ImportError) as e:
        print(f"netslim: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # an internal error: say so in one line, keep the traceback for debugging
        if os.environ.get("NETSLIM_DEBUG"):
            raise
        print(f"netslim: internal error: {type(e).__name__}: {_one_line(e)} (set NETSLIM_DEBUG=1 for details)",
              file=sys.stderr)
        return EXIT_INTERNAL


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _writable_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output folder {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"output folder {out} is not writable")
    return out


def _writable_file(path: str) -> Path:
    out = Path(path)
    _writable_dir(str(out.parent) if str(out.parent) else ".")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name such as {out / 'pruned.pt'}")
    return out


# -- commands --

def cmd_train(args) -> int:
    import torch

    from .checkpoint import describe, load_model
    from .pipeline import ExperimentConfig, build_model_for, make_loaders
    from .train import TrainConfig, resolve_device, train

    info = distributed.init_from_env(args.device)
    out = _writable_dir(args.out)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         sparsity=args.sparsity, sparsity_kind=args.sparsity_kind, bn_init=args.bn_init,
                         sparsity_schedule=args.sparsity_schedule, bn_exclude=tuple(args.bn_exclude),
                         optimizer=args.optimizer, grad_clip=args.grad_clip, seed=args.seed, device=args.device,
                         progress=not args.no_progress, sync_bn=args.sync_bn, amp=args.amp, compile=args.compile,
                         cuda_graph=args.cuda_graph)
    model_kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    if args.pretrained:
        model_kwargs["pretrained"] = True
    experiment = ExperimentConfig(model=args.model, dataset=args.dataset, data_dir=args.data_dir,
                                  download=not args.no_download, val_size=args.val_size, model_kwargs=model_kwargs)
    loader, val, test, train_set = make_loaders(experiment, args.batch_size, resolve_device(args.device), args.seed)
    torch.manual_seed(args.seed)  # the same initial weights on every run, rank and resume
    if args.from_checkpoint:
        model, data = load_model(args.from_checkpoint, factory=args.factory)
        arch = data["arch"]
    else:
        model, kwargs = build_model_for(experiment, train_set)
        arch = describe(model, args.model, kwargs)
    result = train(model, loader, config, val_loader=val, test_loader=test, out_dir=out, arch=arch,
                   resume=not args.no_resume,
                   on_epoch=lambda r: print(_epoch_line(r)))
    final = result["final"]
    if info.is_main:
        print(f"done: test accuracy {100 * final.get('test_accuracy', float('nan')):.2f}% after {final.get('epoch')} "
              f"epochs; checkpoints in {out} (last.pt, best.pt), metrics in {out / 'metrics.jsonl'}")
    return 0


def _epoch_line(r: dict) -> str:
    parts = [f"epoch {r['epoch']}", f"loss {r['train_loss']:.4f}", f"train {100 * r['train_accuracy']:.2f}%"]
    if "val_accuracy" in r:
        parts.append(f"val {100 * r['val_accuracy']:.2f}%")
    if "test_accuracy" in r:
        parts.append(f"test {100 * r['test_accuracy']:.2f}%")
    parts.append(f"|γ|<1e-2: {100 * r.get('gamma_below_1e-2', 0):.1f}%, "
                 f"safe prune {100 * r.get('safe_percent', 0):.0f}%")
    return ", ".join(parts)


def cmd_prune(args) -> int:
    import torch

    from .budget import plan_for_budget
    from .checkpoint import describe, load_model, save_checkpoint
    from .deployment import target_defaults
    from .metrics import count_flops, count_params
    from .models import create_model
    from .plan import plan_pruning
    from .surgery import apply_plan

    ways = [x is not None for x in (args.percent, args.layer_percent, args.target_flops, args.target_params)]
    if sum(ways) > 1:
        raise UsageError("give one of --percent, --layer-percent, --target-flops, --target-params")
    out = _writable_file(args.out)
    if Path(args.checkpoint).is_file() or ":" not in args.checkpoint:
        model, data = load_model(args.checkpoint, factory=args.factory)
        arch = dict(data["arch"])
    else:  # a model factory: its own (e.g. pretrained) weights
        kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
        model = create_model(args.checkpoint, kwargs)
        arch = describe(model, args.checkpoint, kwargs)
    if args.input_size is not None:
        model.input_size = args.input_size if len(args.input_size) > 1 else (3, *args.input_size * 2)
    if getattr(model, "input_size", None) is None:
        raise UsageError(f"{args.checkpoint} does not declare its input size: pass --input-size C,H,W")
    model.eval()
    example = torch.zeros(2, *model.input_size)
    target = args.target if args.target != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    round_to = args.round_to or target_defaults(target)["round_to"]
    if round_to > 1:
        print(f"channel counts rounded to multiples of {round_to} (target {target}; --round-to 1 prunes exactly "
              "the percent asked)")
    options = dict(max_layer_fraction=args.max_layer_fraction, min_channels=args.min_channels, round_to=round_to,
                   example_input=example)
    if args.target_flops is not None or args.target_params is not None:
        plan = plan_for_budget(model, target_flops=args.target_flops, target_params=args.target_params, **options)
    else:
        percent = args.percent if args.percent is not None or args.layer_percent is not None else 0.7
        plan = plan_pruning(model, None if args.layer_percent is not None else percent,
                            layer_percent=args.layer_percent, **options)
    compact = apply_plan(model, plan, fold_bias=not args.no_fold, example_input=example)
    print(f"{'layer':<28} {'before':>7} {'after':>7}  guard")
    for path, report in plan.layers.items():
        print(f"{path:<28} {report.width:>7} {report.kept:>7}  {report.guard}")
    size = model.input_size
    p0, p1, f0, f1 = count_params(model), count_params(compact), count_flops(model, size), count_flops(compact, size)
    collapsed = [p for p, r in plan.layers.items() if r.guard == "collapsed"]
    if collapsed:
        print(f"warning: every |γ| of {len(collapsed)} layer(s) is ~0 ({', '.join(collapsed[:3])}...): λ was too "
              "strong for them; the guard keeps min_channels there")
    print(f"channels pruned: {plan.pruned_channels}/{plan.total_channels} ({100 * plan.achieved_percent:.1f}%), "
          f"threshold |γ| = {plan.threshold:.4g}")
    print(f"params: {p0:,} -> {p1:,} ({100 * (1 - p1 / p0):.1f}% pruned); "
          f"FLOPs: {f0:.3g} -> {f1:.3g} ({100 * (1 - f1 / f0):.1f}% pruned)")
    if args.recalibrate and not args.dataset:
        raise UsageError("--recalibrate needs --dataset (the training batches to re-estimate BN statistics on)")
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
            print(f"test accuracy after re-estimating BN statistics on {args.recalibrate} batches: "
                  f"{100 * evaluate(compact, test)['accuracy']:.2f}%")
    from .checkpoint import layer_shapes
    arch["shapes"] = layer_shapes(compact)
    save_checkpoint(out, {"arch": arch, "state_dict": compact.state_dict(), "plan": plan.to_dict()})
    if args.plan_out:
        plan.save(_writable_file(args.plan_out))
    print(f"compact model saved to {out}")
    return 0


def cmd_finetune(args) -> int:
    from .checkpoint import load_model
    from .pipeline import ExperimentConfig, make_loaders
    from .train import TrainConfig, resolve_device, train

    info = distributed.init_from_env(args.device)
    out = _writable_dir(args.out)
    model, data = load_model(args.checkpoint, factory=args.factory)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         seed=args.seed, device=args.device, progress=not args.no_progress, sync_bn=args.sync_bn,
                         amp=args.amp, compile=args.compile, cuda_graph=args.cuda_graph)
    experiment = ExperimentConfig(model=data["arch"]["name"], dataset=args.dataset, data_dir=args.data_dir,
                                  download=not args.no_download, val_size=args.val_size)
    loader, val, test, train_set = make_loaders(experiment, args.batch_size, resolve_device(args.device), args.seed)
    classes = data["arch"].get("kwargs", {}).get("num_classes")
    if classes not in (None, train_set.num_classes):
        raise UsageError(f"the checkpoint predicts {classes} classes but {args.dataset} has {train_set.num_classes}")
    result = train(model, loader, config, val_loader=val, test_loader=test, out_dir=out, arch=data["arch"],
                   resume=not args.no_resume, on_epoch=lambda r: print(_epoch_line(r)))
    if info.is_main:
        print(f"done: test accuracy {100 * result['final'].get('test_accuracy', float('nan')):.2f}%; "
              f"checkpoints in {out}")
    return 0


def cmd_run(args) -> int:
    from .pipeline import list_presets, load_config, run_experiment

    if args.list:
        for name, description in list_presets().items():
            print(f"{name:<24} {description}")
        return 0
    if not args.config:
        raise UsageError("netslim run: give a preset name or a YAML config (netslim run --list shows the presets)")
    config = load_config(args.config)
    if args.passes:
        config.passes = args.passes
    if args.data_dir:
        config.data_dir = args.data_dir
    if args.epochs:
        config.train["epochs"] = args.epochs
        config.finetune["epochs"] = args.epochs
    if args.device:
        config.train["device"] = args.device
    if args.cuda_graph:
        config.train["cuda_graph"] = True
    config.__post_init__()
    distributed.init_from_env(config.train.get("device", "auto"))
    out = _writable_dir(args.out or f"runs/{Path(args.config).stem}")
    run_experiment(config, out, progress=not args.no_progress)
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
    from .metrics import count_flops, count_params
    from .models import create_model

    path = Path(args.model)
    if path.is_file():
        model, _ = load_model(path, factory=args.factory)
    elif args.model.endswith((".pt", ".pth")):
        raise UsageError(f"checkpoint {path} does not exist")
    else:
        kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
        model = create_model(args.model, kwargs)
    size = args.input_size
    if size is not None and len(size) == 1:
        base = getattr(model, "input_size", (3, size[0], size[0]))
        size = (base[0], *([size[0]] * (len(base) - 1)))
    from torch.nn.modules.batchnorm import _BatchNorm
    widths = {n: m.num_features for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    info = {"model": args.model, "params": count_params(model), "flops": count_flops(model, size),
            "input_size": list(size or model.input_size), "widths": widths}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{args.model}: {info['params']:,} parameters, {info['flops']:.4g} FLOPs at input {info['input_size']}")
        for name, width in widths.items():
            print(f"  {name:<28} {width}")
    return 0


def cmd_export(args) -> int:
    import torch

    from .checkpoint import load_model
    from .deployment import DTYPES, deploy, export_aoti, export_program, misaligned_widths, target_defaults
    from .export import export_onnx

    if not (args.onnx or args.program or args.aoti or args.torchscript):
        raise UsageError("give at least one of --onnx FILE, --program FILE, --aoti FILE, --torchscript FILE")
    target = args.target if args.target != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    defaults = target_defaults(target)
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else defaults["dtype"]
    channels_last = defaults["channels_last"] if args.memory_format == "auto" else args.memory_format == "channels_last"
    device = "cuda" if target == "gpu" and torch.cuda.is_available() else "cpu"
    if args.aoti and target == "gpu" and device != "cuda":
        raise UsageError("--aoti for a gpu target compiles CUDA kernels and needs a CUDA GPU on this machine; "
                         "run the export there, or write --program instead")
    model, _ = load_model(args.checkpoint, factory=args.factory)
    model.eval()
    size = model.input_size
    round_to = args.round_to or defaults["round_to"]
    odd = misaligned_widths(model, round_to, torch.zeros(2, *size))
    if odd:
        listed = ", ".join(f"{k} {v}" for k, v in list(odd.items())[:4]) + (", ..." if len(odd) > 4 else "")
        print(f"warning: {len(odd)} layer widths are not multiples of {round_to} ({listed}): slower on tensor "
              f"cores; prune with --round-to {round_to} (before fine-tuning) to fix")
    dtype_name = next(k for k, v in DTYPES.items() if v == dtype)
    print(f"export for {target}: BN {'kept' if args.no_fold else 'folded'}, {dtype_name}, "
          f"{'channels_last' if channels_last else 'contiguous'}")
    options = dict(device=device, dtype=dtype, channels_last=channels_last, fold=not args.no_fold)
    if args.onnx:
        path = export_onnx(model, _writable_file(args.onnx), size, fold=not args.no_fold, opset=args.opset)
        print(f"ONNX model (fp32) written to {path}")
    if args.program:
        path = export_program(model, _writable_file(args.program), **options)
        print(f"torch.export program written to {path} (load: torch.export.load(path).module())")
    if args.aoti:
        path = export_aoti(model, _writable_file(args.aoti), **options)
        print(f"AOTInductor package written to {path} (load: torch._inductor.aoti_load_package(path))")
    if args.torchscript:
        out = _writable_file(args.torchscript)
        deployed = deploy(model, **options)
        with torch.no_grad():
            traced = torch.jit.trace(deployed, torch.zeros(1, *size, device=device))
        traced.save(str(out))
        print(f"TorchScript model written to {out}")
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

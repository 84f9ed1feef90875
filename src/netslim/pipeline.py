"""The whole method as one resumable job: train with sparsity -> prune -> fine-tune, N passes.

Every stage writes into its own folder of the run; running the same config again resumes the
stage that was interrupted and skips the finished ones. The run ends with a results table like
the paper's (test error, parameters, FLOPs and the pruned fractions), as Markdown and JSON.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import yaml
from torch import nn

from . import distributed, models
from .checkpoint import describe, load_checkpoint, save_checkpoint
from .data.experiment import make_loaders
from .deployment import target_defaults
from .layers import device_of, evaluating
from .metrics import count_flops, count_params
from .plan import DEFAULT_PERCENT, plan_pruning
from .report import write_report
from .runfolder import check_folder, check_output, locked, refuse_overwriting_inputs, write_atomic
from .runstate import HOW_IT_RUNS, TrainingDiverged
from .surgery import apply_plan
from .train import TrainConfig, evaluate, recalibrate_bn, resolve_device, train

PRESET_DIR = Path(__file__).parent / "configs"
PRUNE_KEYS = ("percent", "layer_percent", "max_layer_fraction", "min_channels", "round_to", "aggregate", "exclude")


@dataclass
class ExperimentConfig:
    """One experiment: model, data, the sparse-training and fine-tuning schedules, and the pruning."""

    model: str = "vgg19"
    dataset: str = "cifar10"
    description: str = ""
    model_kwargs: dict = field(default_factory=dict)
    data_dir: str | None = None
    download: bool = True
    val_size: int = 0  # held out of the training set for model selection (paper: 5,000 on CIFAR)
    train_subset: int = 0  # train on a fixed random subset of this many images (0: all), for quick runs
    augment: str | None = None  # None: the dataset's default ("cifar" for CIFAR, else "none")
    stream: bool | None = None  # decode image files batch by batch (StreamLoader); None: for imagenet
    image_size: int = 224  # the decoded side of streamed images
    baseline: bool = True  # also train the unpruned model without sparsity, for the table
    passes: int = 1  # the multi-pass scheme (paper Sec. 4.5, Table 4)
    train: dict = field(default_factory=dict)  # TrainConfig fields for sparsity training
    finetune: dict = field(default_factory=dict)  # overrides of ``train`` for fine-tuning
    prune: dict = field(default_factory=lambda: {"percent": DEFAULT_PERCENT})
    fold_bias: bool | str = True  # or "approximate", "carrier" (see surgery.apply_plan)
    recalibrate: int = 0  # re-estimate BN statistics of the compact model on N batches before fine-tuning
    distill: float = 0.0  # fine-tune with the unpruned model as teacher, with this weight (0: off)

    def __post_init__(self) -> None:
        """Every value is checked here, when the config is read, not after hours of training."""
        if self.augment == "mnist":  # older configs: "mnist" was a second name for the identity
            self.augment = "none"
        problems = _experiment_problems(self)
        if problems:
            raise ValueError(problems[0])
        self.train_config()  # validates early
        self.finetune_config()

    def train_config(self) -> TrainConfig:
        return _train_config(self.train, "train")

    def finetune_config(self) -> TrainConfig:
        merged = {**self.train, "sparsity": 0.0, "bn_init": None, **self.finetune}
        return _train_config(merged, "finetune")

    @classmethod
    def from_dict(cls, d: dict) -> ExperimentConfig:
        if not isinstance(d, dict):
            raise ValueError("a config must be a mapping of option: value")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys: {', '.join(sorted(known))}")
        for key in ("train", "finetune", "prune", "model_kwargs"):
            if key in d and not isinstance(d[key], dict):
                raise ValueError(f"config key '{key}' must be a mapping, got {type(d[key]).__name__}")
        return cls(**d)


def overridden(config: ExperimentConfig, *, passes: int | None = None, data_dir: str | None = None,
               epochs: int | None = None, device: str | None = None, cuda_graph: bool = False) -> ExperimentConfig:
    """A checked copy of ``config`` with what a command line overrides (None/False: kept as it is);
    ``epochs`` applies to every stage (sparse training and fine-tuning)."""
    raw = asdict(config)
    if passes:
        raw["passes"] = passes
    if data_dir:
        raw["data_dir"] = data_dir
    if epochs:
        raw["train"]["epochs"] = raw["finetune"]["epochs"] = epochs
    if device:
        raw["train"]["device"] = device
    if cuda_graph:
        raw["train"]["cuda_graph"] = True
    return ExperimentConfig.from_dict(raw)


def _experiment_problems(c: ExperimentConfig) -> list[str]:
    def count(v, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    def text(v, optional: bool = False) -> bool:
        return (optional and v is None) or (isinstance(v, str) and v.strip() != "")

    checks = [
        (text(c.model), f"model must be a model name, got {c.model!r}"),
        (text(c.dataset), f"dataset must be a dataset name, got {c.dataset!r}"),
        (isinstance(c.description, str), f"description must be text, got {c.description!r}"),
        (text(c.data_dir, optional=True), f"data_dir must be a folder, got {c.data_dir!r}"),
        (isinstance(c.download, bool), f"download must be true or false, got {c.download!r}"),
        (count(c.val_size, 0), f"val_size must be an integer >= 0 (images held out for validation), "
                               f"got {c.val_size!r}"),
        (count(c.train_subset, 0), f"train_subset must be an integer >= 0 (train on that many images; 0: all), "
                                   f"got {c.train_subset!r}"),
        (text(c.augment, optional=True), f"augment must be a name such as cifar or none, got {c.augment!r}"),
        (c.stream is None or isinstance(c.stream, bool), f"stream must be true or false, got {c.stream!r}"),
        (count(c.image_size, 1), f"image_size must be an integer >= 1, got {c.image_size!r}"),
        (isinstance(c.baseline, bool), f"baseline must be true or false, got {c.baseline!r}"),
        (count(c.passes, 1), f"passes must be an integer >= 1, got {c.passes!r}"),
        (isinstance(c.fold_bias, bool | str) and c.fold_bias in (True, False, "exact", "approximate", "carrier"),
         f"fold_bias must be true, false, exact, approximate or carrier, got {c.fold_bias!r}"),
        (count(c.recalibrate, 0), f"recalibrate must be an integer >= 0 (BN re-estimation batches; 0: off), "
                                  f"got {c.recalibrate!r}"),
        (isinstance(c.distill, int | float) and not isinstance(c.distill, bool) and 0 <= c.distill <= 1,
         f"distill must be a weight in [0, 1] (0: off), got {c.distill!r}"),
    ]
    problems = [message for ok, message in checks if not ok]
    unknown = sorted(set(c.prune) - set(PRUNE_KEYS))
    if unknown:
        problems.append(f"unknown prune option(s) {unknown}; valid: {', '.join(PRUNE_KEYS)}")
    return problems or _prune_problems(c.prune)


def _prune_problems(prune: dict) -> list[str]:
    """The pruning options as :func:`netslim.plan.plan_pruning` checks them, with ``round_to: auto`` allowed."""
    from .plan import _check_args

    options = {"min_channels": 1, "round_to": "auto", "aggregate": "max", "exclude": [], **prune}
    if options["round_to"] == "auto":
        options["round_to"] = 1
    if options["aggregate"] not in ("max", "sum"):
        return [f"prune.aggregate must be max or sum, got {options['aggregate']!r}"]
    if not (isinstance(options["exclude"], list) and all(isinstance(p, str) for p in options["exclude"])):
        return [f"prune.exclude must be a list of BN path patterns, got {options['exclude']!r}"]
    for key in ("min_channels", "round_to"):
        if isinstance(options[key], bool):
            return [f"prune.{key} must be an integer >= 1, got {options[key]!r}"]
    try:
        _check_args(options.get("percent"), options.get("layer_percent"), options.get("max_layer_fraction"),
                    options["min_channels"], options["round_to"])
    except ValueError as e:
        return [f"prune: {e}"]
    return []


def _train_config(values: dict, where: str) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {where} option(s) {unknown}; valid: {', '.join(sorted(known))}")
    try:
        return TrainConfig(**values)
    except TypeError as e:
        raise ValueError(f"bad {where} option: {e}") from None


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    return {p.stem: (yaml.safe_load(p.read_text()) or {}).get("description", "")
            for p in sorted(PRESET_DIR.glob("*.yaml"))}


def load_config(name_or_path: str) -> ExperimentConfig:
    """A preset by name (see ``netslim run --list``) or a YAML file."""
    path = Path(name_or_path)
    if not path.is_file():
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"no preset or config file {name_or_path!r}; presets: {', '.join(list_presets())}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply to be a config") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text (YAML) file") from None
    if raw is None:
        raise ValueError(f"{path} is empty: a config names at least the model and the dataset (see netslim run "
                         "--list for presets to start from)")
    return ExperimentConfig.from_dict(raw)


def build_model_for(config: ExperimentConfig, train_set) -> tuple[nn.Module, dict]:
    """The experiment's model, sized for the dataset (classes, input channels and size)."""
    kwargs = dict(config.model_kwargs)
    kwargs.setdefault("num_classes", train_set.num_classes)
    shape = tuple(train_set.sample_shape)
    accepted = models.arguments(config.model) if config.model in models.names() else set()
    if "input_size" in accepted:  # the MLP takes (C, H, W), the conv nets a side length
        kwargs.setdefault("input_size", shape if config.model == "mlp" else shape[-1])
    if "in_channels" in accepted:
        kwargs.setdefault("in_channels", shape[0])
    try:
        model = models.create_model(config.model, kwargs)
    except (TypeError, IndexError, KeyError, AttributeError, RuntimeError, OverflowError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"model_kwargs {config.model_kwargs} do not build {config.model}: {why}") from None
    if getattr(model, "input_size", None) is None:  # a factory's model: its checkpoints record the data's size
        model.input_size = shape
    check_model_fits(model, train_set, config.model, config.dataset)
    return model, kwargs


def check_model_fits(model: nn.Module, train_set, name: str, dataset: str) -> None:
    """A :class:`ValueError` before training when ``model`` cannot take the dataset's images or predicts
    fewer classes than it has (one forward pass of two blank images, in eval mode)."""
    shape = tuple(train_set.sample_shape)
    try:
        with evaluating(model), torch.no_grad():
            out = model(torch.zeros(2, *shape, device=device_of(model)))
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{name} cannot take the {'x'.join(map(str, shape))} images of {dataset}: {why}") from None
    classes = out.shape[-1] if torch.is_tensor(out) and out.dim() == 2 else None
    if classes is not None and classes < train_set.num_classes:
        raise ValueError(f"{name} predicts {classes} classes but {dataset} has {train_set.num_classes} (labels 0.."
                         f"{train_set.num_classes - 1}); give --num-classes {train_set.num_classes} or more")


# -- the job --

# What a run folder may be resumed with that differs from its config.yaml: where and how, not what.
RUN_ONLY = {"description", "data_dir", "download"}


def run_experiment(config: ExperimentConfig, out_dir: str | Path, *, progress: bool = True, resume: bool = True,
                   log=print) -> dict:
    """Run (or resume) the experiment into ``out_dir``; returns the results table as rows.

    The folder is locked while the run lasts. A folder that holds a run of another config is refused
    before anything is written (its stages would no longer fit each other): only where the data is,
    the device and similar may change on resume. ``resume=False`` starts over: every stage is trained
    again from the start, whatever the folder held.
    """
    out = Path(out_dir)
    main = distributed.current().is_main  # under torchrun, rank 0 alone logs and writes
    log = log if main else (lambda *a, **k: None)
    for stage_config in (config.train_config(), config.finetune_config()):  # before the folder is touched
        resolve_device(stage_config.device)
    with locked(out) if main else contextlib.nullcontext():
        if main and resume:
            check_resumable(config, out)
        try:
            return _run_stages(config, out, progress, log, main, resume)
        except TrainingDiverged as e:
            raise TrainingDiverged(f"{str(e).split(';')[0]}; lower lr or sparsity in the config and run it into "
                                   "another --out (this folder's stages were trained with the old values)",
                                   e.epoch) from None


RUN_FILES = ("results.md", "results.json", "config.yaml")


def run_and_report(config: ExperimentConfig, out_dir: str | Path, *, config_file: str | Path | None = None,
                   progress: bool = True, resume: bool = True, log: Callable[[str], None] = print) -> dict:
    """:func:`run_experiment` into ``out_dir``, then its results table and plots (``out_dir/report``, when
    matplotlib is installed) told to ``log`` (rank 0 only). Before anything is written, the run's own files
    (results.md, results.json, config.yaml) are checked: replaced, but never through a link, and never the
    ``config_file`` the config was read from."""
    distributed.init_from_env(config.train.get("device", "auto"))
    out = check_folder(out_dir)
    written = {f"--out ({name})": out / name for name in RUN_FILES}
    refuse_overwriting_inputs(written, {"config": config_file}, advice="give another --out")
    for option, path in written.items():
        check_output(path, overwrite=True, option=option)
    result = run_experiment(config, out, progress=progress, resume=resume)
    if not distributed.current().is_main:
        return result
    log("")
    log((out / "results.md").read_text())
    log(f"results: {out / 'results.md'}, {out / 'results.json'}")
    try:
        log(f"plots: {out / 'report'} ({len(write_report(out))} PNGs)")
    except ImportError as e:  # matplotlib is optional
        log(f"plots skipped: {e}")
    return result


def check_resumable(config: ExperimentConfig, out: Path) -> None:
    """A :class:`ValueError` naming the options when ``out`` holds a run of a config that trains otherwise."""
    try:
        saved = yaml.safe_load((out / "config.yaml").read_text())
    except (OSError, yaml.YAMLError, RecursionError, UnicodeDecodeError):
        return  # nothing readable to compare with: the stages' own checks still hold
    if not isinstance(saved, dict):
        return
    now = yaml.safe_load(yaml.safe_dump(asdict(config)))  # the same plain types the file holds
    changed = []
    for key in sorted(set(saved) | set(now)):
        old, new = saved.get(key), now.get(key)
        if key in ("train", "finetune") and isinstance(old, dict) and isinstance(new, dict):
            changed += [f"{key}.{k} {old.get(k)!r} (now {new.get(k)!r})" for k in sorted(set(old) | set(new))
                        if k not in HOW_IT_RUNS and old.get(k) != new.get(k)]
        elif key not in RUN_ONLY and old != new:
            changed.append(f"{key} {old!r} (now {new!r})")
    if changed:
        raise ValueError(f"{out} holds a run of another config: {', '.join(changed)}; its stages were trained with "
                         "the old values. Run the new config into another --out (or delete this folder)")


def _run_stages(config: ExperimentConfig, out: Path, progress: bool, log, main: bool, resume: bool = True) -> dict:
    sparse_cfg, tune_cfg = config.train_config(), config.finetune_config()
    sparse_cfg.progress = tune_cfg.progress = progress
    device = resolve_device(sparse_cfg.device)
    loaders = make_loaders(config, sparse_cfg.batch_size, device, sparse_cfg.seed)
    train_loader, val_loader, test_loader, train_set = loaders
    torch.manual_seed(sparse_cfg.seed)  # the same initial weights on every run and resume
    model, kwargs = build_model_for(config, train_set)
    size = model.input_size
    prune_options = prune_options_for(config, device)
    if main:  # the data and the model are ready: from here on the folder holds this config's run
        write_atomic(out / "config.yaml", yaml.safe_dump(asdict(config), sort_keys=False))
    rows = []

    def row(label: str, net: nn.Module, error: float, base: nn.Module) -> dict:
        p, f, p0, f0 = count_params(net), count_flops(net, size), count_params(base), count_flops(base, size)
        r = {"model": label, "test_error": round(100 * error, 2), "params": p, "params_pruned": round(1 - p / p0, 4),
             "flops": f, "flops_pruned": round(1 - f / f0, 4)}
        rows.append(r)
        log(f"  {label}: test error {r['test_error']:.2f}%, params {p / 1e6:.3f}M ({100 * r['params_pruned']:.1f}% "
            f"pruned), FLOPs {f:.3g} ({100 * r['flops_pruned']:.1f}% pruned)")
        return r

    original = copy.deepcopy(model)
    if config.baseline:
        log("baseline: training without sparsity")
        baseline = copy.deepcopy(original)
        plain = copy.deepcopy(sparse_cfg)
        plain.sparsity, plain.bn_init = 0.0, None
        train(baseline, train_loader, plain, val_loader=val_loader, out_dir=out / "baseline",
              arch=describe(baseline, config.model, kwargs), resume=resume, log=log)
        row("baseline", _selected(baseline, out / "baseline", val_loader), _test_error(baseline, test_loader),
            original)

    current = model
    for k in range(1, config.passes + 1):
        stage = out / f"pass{k}"
        how = f"λ={sparse_cfg.sparsity:g}" if sparse_cfg.sparsity != "auto" else \
            f"λ chosen for {100 * sparse_cfg.target_sparsity:g}% of channels below 1e-2"
        log(f"pass {k}/{config.passes}: training with sparsity {how}")
        pass_cfg = copy.deepcopy(sparse_cfg)
        if k > 1:
            pass_cfg.bn_init = None  # later passes continue from the fine-tuned weights
        train(current, train_loader, pass_cfg, val_loader=val_loader, out_dir=stage / "sparse",
              arch=describe(current, config.model, kwargs), resume=resume, log=log)
        current = _selected(current, stage / "sparse", val_loader)
        row(f"pass {k} trained with sparsity", current, _test_error(current, test_loader), original)

        plan = plan_pruning(current, **prune_options)  # deterministic: identical on every rank
        compact = apply_plan(current, plan, fold_bias=config.fold_bias)
        guard = f" (guard kept channels in {len(plan.guarded)} layers)" if plan.guarded else ""
        log(f"pass {k}: pruned {plan.pruned_channels}/{plan.total_channels} channels{guard}")
        if main:
            plan.save(stage / "plan.json", overwrite=True)  # the run's own file (a resumed pass plans again)
            save_checkpoint(stage / "pruned.pt", {"arch": describe(compact, config.model, kwargs),
                                                  "state_dict": compact.state_dict(), "plan": plan.to_dict()})
        row(f"pass {k} pruned, before fine-tuning", compact, _test_error(compact, test_loader), original)
        if config.recalibrate:
            recalibrate_bn(compact, train_loader, config.recalibrate)
            row(f"pass {k} pruned, BN re-estimated", compact, _test_error(compact, test_loader), original)

        log(f"pass {k}: fine-tuning the compact model")
        tune = copy.deepcopy(tune_cfg)
        tune.distill = config.distill
        train(compact, train_loader, tune, val_loader=val_loader, out_dir=stage / "finetune",
              arch=describe(compact, config.model, kwargs), teacher=current if config.distill else None,
              resume=resume, log=log)
        current = _selected(compact, stage / "finetune", val_loader)
        row(f"pass {k} fine-tuned", current, _test_error(current, test_loader), original)

    if main:
        write_atomic(out / "results.json", json.dumps({"config": asdict(config), "rows": rows}, indent=1))
        write_atomic(out / "results.md", results_markdown(rows, config))
    distributed.barrier()
    return {"rows": rows}


def prune_options_for(config: ExperimentConfig, device: torch.device) -> dict:
    """The experiment's pruning options, ``round_to: auto`` (the default) resolved by the device's deployment
    target (:func:`netslim.deployment.target_defaults`): on a GPU, channel counts are rounded up to multiples
    of 8 for tensor cores (widths off those multiples waste them); elsewhere the exact percent is pruned."""
    options = dict(config.prune)
    if options.get("round_to", "auto") == "auto":
        options["round_to"] = target_defaults("gpu" if device.type == "cuda" else "cpu")["round_to"]
    return options


def _selected(model: nn.Module, stage: Path, val_loader) -> nn.Module:
    """The model to carry on with: the best validation epoch's when there is a validation set."""
    if val_loader is None or not (stage / "best.pt").exists():
        return model
    best = copy.deepcopy(model)  # same architecture: only the weights come from the file
    best.load_state_dict(load_checkpoint(stage / "best.pt", map_location=device_of(model))["state_dict"])
    return best


def _test_error(model: nn.Module, loader) -> float:
    return 1.0 - evaluate(model, loader)["accuracy"]


def results_markdown(rows: list[dict], config: ExperimentConfig) -> str:
    lines = [f"# {config.model} on {config.dataset}" + (f": {config.description}" if config.description else ""),
             "", "| Model | Test error (%) | Parameters | Pruned | FLOPs | Pruned |", "|---|---|---|---|---|---|"]
    for r in rows:
        pruned_p = f"{100 * r['params_pruned']:.1f}%" if r["params_pruned"] else "-"
        pruned_f = f"{100 * r['flops_pruned']:.1f}%" if r["flops_pruned"] else "-"
        lines.append(f"| {r['model']} | {r['test_error']:.2f} | {_si(r['params'])} | {pruned_p} | "
                     f"{r['flops']:.2e} | {pruned_f} |")
    return "\n".join(lines) + "\n"


def _si(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"

"""BENCHMARKS.md from the benchmark records: the one renderer (``python benchmarks/run_all.py --render``).

The document is data. ``SECTIONS`` lists, per section, its title, the script that measured it (its
``markdown`` writes the body, its ``goals`` the section's rows of the summary table), the records it
shows, the commands that re-measure it, and the source files whose behaviour it measures. Above each body
the renderer states the commit and date its records were measured at, and whether the measured code has
changed since:

* a record that names its commit (``machine.commit``: the commit its run began at, ``+changes`` when the
  tree had uncommitted edits, judged from the commit and said so): ``git diff --name-only <commit> HEAD
  -- <paths>`` (what ``git diff --quiet`` tests, with the files named);
* a record without one (the older runs): the files that commits after the record's date changed
  (``git log --since``; a date without a time counts from the start of that day).

Any file found marks the section STALE, in its heading and its first line, with the files. Where git
cannot answer (not installed, not a checkout, a commit it does not know) the section says so instead.
The benchmark scripts are not among the paths: a change to how a figure is measured comes with a new run.
The summary table at the top has one row per goal, built from the same records by the scripts' ``goals``.
"""

from __future__ import annotations

import datetime
import importlib
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DOC = ROOT / "BENCHMARKS.md"
if str(HERE) not in sys.path:  # the scripts import each other (common, zoo) by name
    sys.path.insert(0, str(HERE))

from common import Goal, provenance  # noqa: E402


def _src(*names: str) -> tuple[str, ...]:
    return tuple(f"src/netslim/{n}" for n in names)


# What every pruning call runs: the analysis (graph, its result, its op rules, the stand-ins that skip the
# multiply-adds, the width probe), the plan, the surgery and the compaction that narrows each layer type, and
# the model-source hook surgery calls.
PRUNING = _src("graph.py", "channel_graph.py", "channel_ops.py", "shape_only.py", "width_probe.py", "plan.py",
               "surgery.py", "compaction.py", "architecture.py", "layers.py", "metrics.py", "models/sources.py")
SPARSE_TRAINING = _src("train.py", "steps.py", "sparsity.py", "sparsity_target.py", "stats.py", "runstate.py")
FMNIST_EXPERIMENT = _src("pipeline.py", "checkpoint.py", "data/mnist.py", "data/experiment.py", "data/loader.py",
                         "data/augment.py", "models/vgg.py", "models/mlp.py")
LATENCY_PLANNER = _src("latency.py", "layer_law.py", "latency_cache.py", "timing.py", "budget.py", "export.py")
FIDELITY_RUNS = [f"benchmarks/fidelity.py {stage} --seed {seed}" for seed in (0, 1, 2) for stage in
                 ("baseline", "sweep --lam 2e-3", "sweep --lam 4e-3", "sweep --lam 8e-3", "select", "figure5",
                  "table1", "scratch", "mlp --lam 2e-3", "mlp --lam 1e-2", "target")]


@dataclass(frozen=True)
class Section:
    """One section of BENCHMARKS.md: where its records are, what renders them, what code they measure."""

    title: str
    script: str                 # benchmarks/<script>.py: measures; its markdown() and goals() render
    files: tuple[str, ...]      # its records under benchmarks/results/ ({mode}: the first mode found wins)
    paths: tuple[str, ...]      # the code it measures: a change there since the records makes it stale
    takes: str = "record"       # what markdown() and goals() take: "record" (the one), "records", "folder"
    run: tuple[str, ...] = ()   # the commands that re-measure it (full mode), from the repository root
    quick: bool = False         # `<script>.py --quick` writes a record this section shows when no full one is
    needs: tuple[str, ...] = ()  # modules it imports, "cuda", "fashion-mnist"
    own_provenance: bool = False  # the body states each record's command and machine itself

    @property
    def name(self) -> str:
        return self.script


SECTIONS = (
    Section("Sparsity regularizer overhead per training step", "regularizer_overhead",
            ("regularizer_overhead_{mode}.json",),
            _src("sparsity.py", "layers.py", "models/vgg.py", "models/resnet.py"),
            run=("benchmarks/regularizer_overhead.py --full --threads 1",), quick=True),
    Section("Pruning time: analysis, planning, surgery", "surgery_time", ("surgery_time_{mode}.json",),
            PRUNING + _src("models/vgg.py", "models/resnet.py", "models/densenet.py"),
            run=("benchmarks/surgery_time.py --full --threads 1",), quick=True),
    Section("Training pipeline overhead", "pipeline_overhead", ("pipeline_overhead_{mode}.json",),
            _src("train.py", "steps.py", "sparsity.py", "runstate.py", "data/loader.py", "data/augment.py",
                 "data/base.py", "models/vgg.py"),
            run=("benchmarks/pipeline_overhead.py --full --threads 1",), quick=True),
    Section("Inference: compact vs original VGG-19", "inference", ("inference_{mode}.json",),
            PRUNING + _src("export.py", "timing.py", "models/vgg.py"),
            run=("benchmarks/inference.py --full --threads 1",), quick=True, needs=("onnx", "onnxruntime")),
    Section("Default export vs the original model (CPU target)", "export_speed", ("export_speed_{mode}.json",),
            PRUNING + _src("deployment.py", "export.py", "models/vgg.py"),
            run=("benchmarks/export_speed.py --full --threads 1",), quick=True),
    Section("Streaming ImageNet-size JPEGs (CPU)", "jpeg_stream", ("jpeg_stream_{mode}.json",),
            _src("data/stream.py", "data/jpeg.py", "data/imagefolder.py", "data/augment.py", "data/loader.py"),
            run=("benchmarks/jpeg_stream.py --full --threads 1",), quick=True, needs=("PIL",)),
    Section("Pruning for measured speed (latency tables)", "latency", ("latency_{mode}.json",),
            LATENCY_PLANNER + PRUNING + _src("pruning.py", "deployment.py", "models/vgg.py", "models/resnet.py"),
            run=("benchmarks/latency.py --full --threads 2",), quick=True,
            needs=("onnx", "onnxruntime", "torch_pruning")),
    Section("Accuracy: the paper's claims on real data (Fashion-MNIST)", "accuracy", ("accuracy_*.json",),
            SPARSE_TRAINING + FMNIST_EXPERIMENT + PRUNING + _src("budget.py", "recalibration.py"),
            takes="folder", run=("benchmarks/accuracy.py all --out runs/bench",), needs=("fashion-mnist",),
            own_provenance=True),
    Section("Sparsity that emerges, and pruning before fine-tuning (VGG-19 cfg at 1/8 width, Fashion-MNIST)",
            "fidelity", ("fidelity_*.json",), SPARSE_TRAINING + FMNIST_EXPERIMENT + PRUNING + _src("report.py"),
            takes="folder", run=(*FIDELITY_RUNS,), needs=("fashion-mnist", "matplotlib"), own_provenance=True),
    Section("netslim vs Torch-Pruning's BN-scale pruner", "torch_pruning_compare", ("torch_pruning_compare.json",),
            PRUNING + _src("models/vgg.py", "models/resnet.py"),
            run=("benchmarks/torch_pruning_compare.py",), needs=("torch_pruning",)),
    Section("Real models from timm, torchvision, Ultralytics and smp", "zoo", ("zoo_{mode}.json",), PRUNING,
            run=("benchmarks/zoo.py --full --jobs 2",), quick=True,
            needs=("timm", "torchvision", "ultralytics", "segmentation_models_pytorch", "torch_pruning")),
    Section("Latency planner on a busy machine", "latency_under_load", ("latency_under_load_{mode}.json",),
            LATENCY_PLANNER + PRUNING + _src("cli/prune.py", "prune_checkpoint.py", "pruning.py", "checkpoint.py",
                                              "deployment.py"),
            run=("benchmarks/latency_under_load.py --full --threads 1",)),
    Section("Pruning time beside Torch-Pruning", "prune_speed", ("prune_speed_{mode}.json",), PRUNING,
            run=("benchmarks/prune_speed.py --full",), quick=True,
            needs=("torchvision", "ultralytics", "torch_pruning")),
    Section("Sparsity in a detector's own workflow: YOLOv8n, Ultralytics' trainer, λ chosen by netslim", "yolo",
            ("yolo_full*.json",), _src("integrations/ultralytics.py", "recalibration.py") + SPARSE_TRAINING
            + PRUNING + LATENCY_PLANNER, takes="records", run=("benchmarks/yolo.py --full",),
            needs=("ultralytics", "onnx", "onnxruntime")),
    Section("GPU", "gpu", ("gpu.json",), _src("train.py", "steps.py", "sparsity.py", "data/loader.py",
                                              "data/stream.py", "data/jpeg.py", "deployment.py", "export.py")
            + PRUNING + _src("models/vgg.py"), run=("benchmarks/gpu.py",), needs=("cuda",)),
)

RUN_LINE = ("`python benchmarks/run_all.py --render` wrote this file from the records in benchmarks/results/; "
            "`--full` re-measures every section this machine can (each script's full mode, one at a time: hours, "
            "as the fidelity, accuracy, latency and zoo runs train or time for long; `--only NAME ...` picks "
            "sections, and a section whose packages, dataset or GPU are missing is skipped with the reason), "
            "`--quick` runs the quick modes of the sections that show one (about a minute each).")

METHOD = """## How the figures are taken

Each section's records (`benchmarks/results/*.json`) hold every sample's summary (median, quartiles,
min, count), the settings, the machine and, for runs since the records began to name it, the commit the
run began at. Each section opens with that commit and date, and says STALE with the files when the
code it measures has changed since (`git diff` from the record's commit to HEAD, or, for a record
without one, the commits after its date). Every timing is taken twice: wall clock
(`time.perf_counter`) and the process's CPU time (`time.process_time`). With one compute thread the
CPU time is the computation itself, without the time spent waiting for a core while other processes
ran; on this shared machine (see the load averages) it is the steadier figure. Where a goal is a
ratio of percent size (regularizer, pipeline), the overhead is also timed inside the real run, and
the goal is judged on that in-situ figure; each section says which. Absolute times move with the
machine and its load: compare ratios measured in one run.

Thread count: `torch.set_num_threads(1)` unless a section says otherwise. On this 2-core machine,
shared with other jobs, two OpenMP threads competing with another busy process for the cores slowed a
tiny training step about 200-fold (0.84 s instead of 0.004 s), so one thread gives the reproducible
figures; run a script with `--threads N` on a dedicated machine.
"""


# -- records --

def records_of(section: Section, results: Path = RESULTS, modes: Sequence[str] = ("full", "quick")) -> list[dict]:
    """The section's records: for a ``{mode}`` pattern the first of ``modes`` that has any; other patterns as
    found, without the scripts' check runs (``*_quick``, ``*_smoke``: they check a script, not a claim)."""
    fixed = [p for pattern in section.files if "{mode}" not in pattern for p in sorted(results.glob(pattern))
             if not p.stem.endswith(("_quick", "_smoke"))]
    by_mode: list[Path] = []
    for mode in modes:
        by_mode = [p for pattern in section.files if "{mode}" in pattern
                   for p in sorted(results.glob(pattern.format(mode=mode)))]
        if by_mode:
            break
    return [json.loads(p.read_text()) for p in fixed + by_mode]


# -- freshness --

class GitUnanswered(Exception):
    """Git could not say whether the code changed (not installed, not a checkout, an unknown commit)."""


def _git(args: Sequence[str], root: Path) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=root, text=True, capture_output=True, timeout=60)
    except FileNotFoundError:
        raise GitUnanswered("git is not available here") from None
    except (OSError, subprocess.SubprocessError) as e:
        raise GitUnanswered(f"git did not run ({type(e).__name__}: {e})") from None
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0]
        raise GitUnanswered(f"`git {args[0]}` failed: {said}")
    return done.stdout


def _commit(rec: dict) -> str | None:
    return rec.get("machine", {}).get("commit") or None


def _date(rec: dict) -> str:
    """The record's date as written ('2026-12-07 19:04', '2026-11-23'), an ISO time shortened to the minute."""
    text = str(rec.get("machine", {}).get("date", "?"))
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return text
    return when.strftime("%Y-%m-%d %H:%M") if "T" in text or ":" in text else text


def changed_since(commit: str | None, date: str, paths: Sequence[str], root: Path = ROOT) -> set[str]:
    """The paths changed between ``commit`` and HEAD, or, without a commit, by the commits after ``date``
    (as the record wrote it: a time without a zone is read in this machine's, as git reads it)."""
    if commit:
        out = _git(["diff", "--name-only", commit.removesuffix("+changes"), "HEAD", "--", *paths], root)
    else:
        try:
            datetime.datetime.fromisoformat(date)
        except ValueError:
            raise GitUnanswered(f"the record names neither its commit nor a date ({date!r})") from None
        since = date if ":" in date else f"{date} 00:00"  # a day alone: every commit of that day may be later
        out = _git(["log", f"--since={since}", "--format=", "--name-only", "HEAD", "--", *paths], root)
    return {line for line in out.splitlines() if line.strip()}


@dataclass(frozen=True)
class Freshness:
    """When a set of records was measured, and what of the code they measure changed since."""

    measured: str                    # 'at commit 3afcfbc, 2026-12-07 19:43' (one part per commit)
    short: str                       # for the summary table: '3afcfbc, 2026-12-07'
    changed: tuple[str, ...] = ()    # the measured files changed since
    unknown: str = ""                # why git could not tell, when it could not

    @property
    def stale(self) -> bool:
        return bool(self.changed)


def freshness(records: Sequence[dict], paths: Sequence[str], root: Path = ROOT) -> Freshness:
    groups: dict[str | None, list[dict]] = {}
    for rec in records:
        groups.setdefault(_commit(rec), []).append(rec)
    measured, short, changed, unknown = [], [], set(), []
    for commit, recs in groups.items():
        dates = sorted(_date(r) for r in recs)
        last = dates[-1][11:] if dates[-1][:10] == dates[0][:10] else dates[-1]  # the same day: its time alone
        when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {last}"
        if commit:
            dirty = " (with uncommitted changes)" if commit.endswith("+changes") else ""
            measured.append(f"at commit {commit.removesuffix('+changes')}{dirty}, {when}")
            short.append(f"{commit.removesuffix('+changes')}, {dates[0][:10]}")
        else:
            measured.append(f"on {when} (commit not recorded)")
            short.append(f"not recorded, {dates[0][:10]}")
        earliest = str(min(recs, key=_date).get("machine", {}).get("date", "?"))
        try:
            changed |= changed_since(commit, earliest, paths, root)
        except GitUnanswered as e:
            unknown.append(str(e))
    return Freshness("; ".join(measured), "; ".join(short), tuple(sorted(changed)),
                     "; ".join(dict.fromkeys(unknown)))


def _files(paths: Sequence[str]) -> str:
    inside = [p.removeprefix("src/netslim/") for p in paths if p.startswith("src/netslim/")]
    outside = [p for p in paths if not p.startswith("src/netslim/")]
    return ", ".join(([f"{', '.join(inside)} (src/netslim/)"] if inside else []) + outside)


def status_line(f: Freshness, paths: Sequence[str]) -> str:
    """The section's first line: STALE with the files, or fresh, or why that is unknown; when and what."""
    what = f"Measured {f.measured}. Code measured: {_files(paths)}."
    if f.stale:
        rest = f" Freshness of some records unknown: {f.unknown}." if f.unknown else ""
        return f"> **STALE: code changed since: {_files(f.changed)}.** {what}{rest}"
    if f.unknown:
        return f"> {what} Freshness unknown: {f.unknown}."
    return f"> Fresh: the code it measures is unchanged since. {what}"


def status_cell(f: Freshness) -> str:
    if f.stale:
        return f"**STALE** ({len(f.changed)} file{'s' if len(f.changed) > 1 else ''})"
    return f"unknown: {f.unknown}" if f.unknown else "fresh"


# -- the document --

def _call(section: Section, function: str, records: list[dict], results: Path):
    module = importlib.import_module(section.script)
    argument = {"record": records[0] if records else None, "records": records, "folder": results}[section.takes]
    return getattr(module, function)(argument)


def section_text(section: Section, records: list[dict], results: Path, root: Path = ROOT) -> str:
    """The section: its heading (STALE when so), the status line, the script's body, the provenance."""
    if not records:
        runs = "; ".join(f"`python {r}`" for r in section.run[:3]) + (" ..." if len(section.run) > 3 else "")
        return f"## {section.title}\n\nNo record yet: {runs or f'run benchmarks/{section.script}.py'}.\n"
    f = freshness(records, section.paths, root)
    try:
        body = _call(section, "markdown", records, results)
    except Exception as e:  # one script's renderer must not stop the others
        body = f"(`{section.script}.markdown` failed: {type(e).__name__}: {e})\n"
    where = "" if section.own_provenance else "\n" + provenance(records)
    return (f"## {section.title}{' — STALE' if f.stale else ''}\n\n{status_line(f, section.paths)}\n\n"
            f"{body.strip()}\n{where}")


def _cell(text: str) -> str:
    """Text for a table cell: a '|' (as in |γ|) escaped, so it does not end the cell."""
    return re.sub(r"(?<!\\)\|", r"\\|", text)


def summary_rows(sections: Sequence[Section], found: dict[str, list[dict]], results: Path,
                 root: Path = ROOT) -> list[str]:
    rows = ["| goal | measured | ratio or figure | commit, date | code since |", "|---|---|---|---|---|"]
    for section in sections:
        records = found[section.name]
        if not records:
            rows.append(f"| {section.title} | no record yet | - | - | - |")
            continue
        try:
            goals = _call(section, "goals", records, results)
        except Exception as e:  # one script's summary must not stop the others
            goals = [Goal(section.title, f"(`{section.script}.goals` failed: {type(e).__name__}: {e})", "-")]
        for goal in goals:
            f = freshness(list(goal.records) or records, section.paths, root)
            cells = (goal.goal, goal.measured, goal.figure, f.short, status_cell(f))
            rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def render(results: Path = RESULTS, doc: Path | None = DOC, modes: Sequence[str] = ("full", "quick"),
           sections: Sequence[Section] = SECTIONS, root: Path = ROOT) -> str:
    """BENCHMARKS.md from the records in ``results`` (written to ``doc`` unless None); returns the text."""
    found = {s.name: records_of(s, results, modes) for s in sections}
    parts = ["# Benchmarks\n", RUN_LINE + "\n", "## Summary\n",
             "\n".join(summary_rows(sections, found, results, root)) + "\n",
             "*Code since*: whether the code a row measures changed after its records were made (its section "
             "names the files). Commit *not recorded*: a run from before the records named their commit.\n",
             METHOD]
    parts += [section_text(s, found[s.name], results, root) for s in sections]
    text = "\n".join(parts).rstrip() + "\n"
    if doc is not None:
        doc.write_text(text)
    return text

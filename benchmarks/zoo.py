"""Real models from timm, torchvision, Ultralytics and smp: netslim beside Torch-Pruning's BN-scale pruner.

For each model, built by its own library with random weights (nothing downloaded) and BN scales,
shifts and statistics randomized from a seeded generator (``common.randomize_bn``), both tools prune
half of the channels by a global ranking of BN |γ|:

* netslim: ``trace_channels`` + ``plan_pruning(percent=0.5)`` + ``apply_plan`` (timed apart); then
  the compact model is compared with ``masked_model`` (pruned γ zeroed) in eval mode, on the example
  input and on another input size (batch 2): max over output tensors of max|compact - masked| / max|masked|.
* Torch-Pruning: ``tp.pruner.BNScalePruner(model, example, tp.importance.BNScaleImportance(),
  global_pruning=True, pruning_ratio=0.5, ignored_layers=<output layers>)`` + ``step()``, in its default
  configuration; the output layers ignored as its examples do (timm ``get_classifier()``, torchvision's
  last Linear, the Ultralytics Detect/Segment head, smp's ``segmentation_head``). Its pruned model is
  run on both inputs; its exactness is not measured (it does not define a masked reference).

Both record success or failure (the first line of the error), time, parameters and FLOPs
(``netslim.count_flops``, one sample at the example size) after/before, and BN channels after/before.
Each model runs in its own process (``--worker``), so a tool that crashes, exhausts memory (each tool
gets a soft address-space limit) or hangs (a time limit per run, and per check after it) is recorded
as such and the sweep goes on. Needs timm, torchvision, ultralytics, segmentation-models-pytorch and
torch-pruning; a model whose package is missing is recorded as not built.

Usage: python benchmarks/zoo.py [--full | --quick | --smoke] [--threads N]
(not part of run_all.py's runs, which need none of these packages; run_all.py --render shows its result)
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils import _pytree as pytree

import netslim
from common import begin, finish, randomize_bn, summaries

NAME = "zoo"
HERE = Path(__file__).resolve().parent
MARK = "ZOO-RESULT "
TOOLS = ("netslim", "torch_pruning")

FULL = [
    "timm/efficientnet_b0", "timm/tf_efficientnet_b0", "timm/mobilenetv2_100", "timm/mnasnet_100",
    "timm/densenet121", "timm/regnety_008", "timm/dpn68", "timm/cspdarknet53", "timm/vovnet39a",
    "timm/repvgg_a0", "timm/mobileone_s0", "timm/convnext_atto",
    "torchvision/resnet18", "torchvision/resnet50", "torchvision/mobilenet_v3_small",
    "ultralytics/yolov8n.yaml", "ultralytics/yolo11n.yaml", "ultralytics/yolov8n-seg.yaml",
    "ultralytics/yolo11n-seg.yaml",
    "smp/FPN/efficientnet-b0", "smp/Unet/resnet34",
]
QUICK = ["timm/efficientnet_b0", "timm/densenet121", "torchvision/resnet18", "ultralytics/yolov8n.yaml",
         "ultralytics/yolo11n.yaml", "smp/FPN/efficientnet-b0"]
COMMON = {"percent": 0.5, "seed": 0, "memory_gb": 6}
SETTINGS = {
    "full": {**COMMON, "models": FULL, "size": 128, "other": 160, "warmup": 1, "repeats": 3, "limit_s": 120},
    "quick": {**COMMON, "models": QUICK, "size": 128, "other": 160, "warmup": 0, "repeats": 1, "limit_s": 60},
    "smoke": {**COMMON, "models": ["torchvision/resnet18"], "size": 64, "other": 96, "warmup": 0, "repeats": 1,
              "limit_s": 60},
}


# -- the models, as their libraries build them --

def build(name: str) -> nn.Module:
    """``<library>/<model>``: random weights from the library's own constructor, never downloading weights."""
    source, _, rest = name.partition("/")
    if source == "timm":
        import timm

        return timm.create_model(rest, pretrained=False)
    if source == "torchvision":
        import torchvision

        return torchvision.models.get_model(rest, weights=None)
    if source == "ultralytics":
        from ultralytics.nn.tasks import DetectionModel, SegmentationModel

        return (SegmentationModel if "-seg" in rest else DetectionModel)(rest, verbose=False)
    if source == "smp":
        import segmentation_models_pytorch as smp

        arch, encoder = rest.split("/")
        return getattr(smp, arch)(encoder_name=encoder, encoder_weights=None)
    raise ValueError(f"unknown model source in {name!r}")


def output_layers(name: str, model: nn.Module) -> list[nn.Module]:
    """The layers producing the model's outputs, which Torch-Pruning is told to leave alone."""
    source = name.partition("/")[0]
    if source == "timm":
        head = model.get_classifier()
        return [head] if isinstance(head, nn.Module) and any(True for _ in head.parameters()) else []
    if source == "torchvision":
        return [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    if source == "ultralytics":
        return [model.model[-1]]  # Detect / Segment
    if source == "smp":
        return [model.segmentation_head]
    return []


# -- one model, in its own process --

def leaves(out) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def max_relative_error(out, ref) -> float:
    a, b = leaves(out), leaves(ref)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        return float("inf")
    return max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-12)) for x, y in zip(a, b, strict=True))


def bn_channels(model: nn.Module) -> int:
    return sum(m.num_features for m in model.modules() if isinstance(m, _BatchNorm))


def sizes(model: nn.Module, compact: nn.Module, size: int) -> dict:
    shape = (3, size, size)
    p0, p1 = netslim.count_params(model), netslim.count_params(compact)
    f0, f1 = netslim.count_flops(model, shape), netslim.count_flops(compact, shape)
    b0, b1 = bn_channels(model), bn_channels(compact)
    return {"params": [p0, p1], "params_ratio": p1 / p0, "flops": [f0, f1], "flops_ratio": f1 / f0,
            "bn_channels": [b0, b1], "bn_channels_ratio": b1 / b0 if b0 else None}


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def lap(stages: dict, key: str, start: tuple[float, float]) -> tuple[float, float]:
    now = clock()
    stages.setdefault(key, {"wall": [], "cpu": []})
    stages[key]["wall"].append(now[0] - start[0])
    stages[key]["cpu"].append(now[1] - start[1])
    return now


def timings(stages: dict) -> dict:
    """``seconds`` / ``cpu_seconds``: the median wall / process CPU time of a whole run; ``stages``: every
    stage's summaries. With one thread on a shared machine, CPU time leaves out waiting for a core."""
    stats = {k: summaries(v) for k, v in stages.items()}
    return {"seconds": stats["total"]["wall"]["median"], "cpu_seconds": stats["total"]["cpu"]["median"],
            "stages": stats}


def run_netslim(name: str, model: nn.Module, inputs: dict, cfg: dict, stage: list[str]) -> dict:
    stages: dict = {}
    for r in range(cfg["warmup"] + cfg["repeats"]):
        timed = stages if r >= cfg["warmup"] else {}
        signal.alarm(cfg["limit_s"])  # the limit is per run
        forget = getattr(netslim.graph, "clear_cache", None)
        if forget is not None:  # every run analyses the model anew, not from netslim's per-model cache
            forget()
        t = start = clock()
        stage.append("analysis")
        graph = netslim.trace_channels(model, inputs["example"])
        t = lap(timed, "analysis", t)
        stage.append("planning")
        plan = netslim.plan_pruning(model, cfg["percent"], graph=graph)
        t = lap(timed, "planning", t)
        stage.append("surgery")
        compact = netslim.apply_plan(model, plan, graph=graph)
        lap(timed, "surgery", t)
        lap(timed, "total", start)
    signal.alarm(cfg["limit_s"])
    stage.append("comparison with the masked model")
    masked = netslim.masked_model(model, plan, graph=graph).eval()
    compact.eval()
    with torch.no_grad():
        errors = {k: max_relative_error(compact(x), masked(x)) for k, x in inputs.items()}
    stage.append("counting")
    return {"status": "ok", **timings(stages),
            **sizes(model, compact, cfg["size"]), "channels_pruned": plan.pruned_channels,
            "channels_prunable": plan.total_channels, "errors": errors, "max_relative_error": max(errors.values()),
            "bn_layers": len(graph.bns), "selection_bns": sum(u.kind == "select_bn" for u in graph.bns.values()),
            "guarded": plan.guarded, "fixed_notes": len(graph.notes), "first_notes": graph.notes[:3]}


def run_torch_pruning(name: str, model: nn.Module, inputs: dict, cfg: dict, stage: list[str]) -> dict:
    import torch_pruning as tp

    stages: dict = {}
    for r in range(cfg["warmup"] + cfg["repeats"]):
        timed = stages if r >= cfg["warmup"] else {}
        pruned = copy.deepcopy(model).eval()
        signal.alarm(cfg["limit_s"])  # the limit is per run
        t = start = clock()
        stage.append("analysis")
        pruner = tp.pruner.BNScalePruner(pruned, inputs["example"], tp.importance.BNScaleImportance(),
                                         global_pruning=True, pruning_ratio=cfg["percent"],
                                         ignored_layers=output_layers(name, pruned))
        t = lap(timed, "analysis", t)
        stage.append("pruning")
        pruner.step()
        lap(timed, "pruning", t)
        lap(timed, "total", start)
    out = timings(stages)
    signal.alarm(cfg["limit_s"])
    with torch.no_grad():
        for x in inputs.values():
            stage.append(f"forward of the pruned model at {tuple(x.shape)}")
            pruned(x)
    stage.append("counting")
    return {**out, "status": "ok", **sizes(model, pruned, cfg["size"])}


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


class _Timeout(BaseException):  # not an Exception: a library's own ``except Exception`` must not swallow it
    pass


def _alarm(signum, frame):
    raise _Timeout


def guarded(fn, cfg: dict) -> dict:
    """``fn(stage)`` under a time limit (SIGALRM) and a soft address-space limit; a failure becomes a record
    naming the stage ``fn`` last appended to ``stage``."""
    stage: list[str] = ["start"]
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    base = _address_space()
    limit = base + int(cfg["memory_gb"] * 2**30)
    if hard == resource.RLIM_INFINITY or limit < hard:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(cfg["limit_s"])
    started = time.perf_counter()
    try:
        return fn(stage)
    except _Timeout:
        grown = (_address_space() - base) / 2**30
        return {"status": "timeout", "stage": stage[-1],
                "error": f"no result after {cfg['limit_s']} s (address space grew by {grown:.1f} GB)"}
    except MemoryError:
        return {"status": "failed", "stage": stage[-1],
                "error": f"MemoryError: needed more than {cfg['memory_gb']} GB of further address space"}
    except Exception as e:
        return {"status": "failed", "stage": stage[-1], "error": first_line(e),
                "after_s": round(time.perf_counter() - started, 2)}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _address_space() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def worker(name: str, cfg: dict) -> None:
    """Build one model and run both tools on it, printing one result line per tool as it finishes."""
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    try:
        model = randomize_bn(build(name), seed=cfg["seed"]).eval()
    except Exception as e:
        print(MARK + json.dumps({"tool": "build", "status": "failed", "error": first_line(e)}), flush=True)
        return
    g = torch.Generator().manual_seed(cfg["seed"] + 1)
    inputs = {"example": torch.randn(1, 3, cfg["size"], cfg["size"], generator=g),
              "other": torch.randn(2, 3, cfg["other"], cfg["other"], generator=g)}
    for tool, fn in (("netslim", run_netslim), ("torch_pruning", run_torch_pruning)):
        result = guarded(lambda stage, fn=fn: fn(name, model, inputs, cfg, stage), cfg)
        print(MARK + json.dumps({"tool": tool, **result}, default=str), flush=True)


def measure(name: str, cfg: dict) -> dict:
    """Run ``worker`` for ``name`` in a fresh process; a tool that left no line crashed or hung."""
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": str(cfg["threads"])}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, json.dumps(cfg)]
    runs = cfg["warmup"] + cfg["repeats"]
    backstop = 2 * runs * cfg["limit_s"] + 120  # per-run limits are enforced inside; this catches a hang in C code
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=backstop, env=env, cwd=HERE)
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        stderr, code = "", None
    found = {}
    for line in stdout.splitlines():
        if line.startswith(MARK):
            rec = json.loads(line[len(MARK):])
            found[rec.pop("tool")] = rec
    row = {"model": name}
    if "build" in found:
        return {**row, "built": False, "error": found["build"]["error"]}
    for tool in TOOLS:
        if tool not in found:
            tail = [x for x in stderr.strip().splitlines() if x.strip()][-1:] or [""]
            found[tool] = ({"status": "timeout", "error": f"process killed after {backstop} s"} if code is None else
                           {"status": "crashed", "error": f"exit code {code}: {tail[0][:200]}"})
        row[tool] = found[tool]
    return {**row, "built": True}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:
        worker(argv[1], json.loads(argv[2]))
        return {}
    run = begin(__doc__, argv, SETTINGS)
    cfg = {**run.settings, "threads": run.threads}
    rows = []
    for name in cfg["models"]:
        started = time.perf_counter()
        row = measure(name, cfg)
        rows.append(row)
        print(f"{name:<32} {_line(row)} ({time.perf_counter() - started:.0f} s)", flush=True)
    versions = _versions()
    notes = _summary(rows, cfg)
    return finish(NAME, run, {"models": rows, "versions": versions}, notes)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "torchvision", "timm", "ultralytics", "segmentation-models-pytorch", "torch-pruning"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _line(row: dict) -> str:
    if not row["built"]:
        return f"not built: {row['error']}"
    parts = []
    for tool in TOOLS:
        r = row[tool]
        if r["status"] == "ok":
            extra = f" err {r['max_relative_error']:.1e}" if "max_relative_error" in r else ""
            parts.append(f"{tool} {r['cpu_seconds']:.2f}s CPU params {r['params_ratio']:.2f}{extra}")
        else:
            parts.append(f"{tool} {r['status']}: {r['error'][:70]}")
    return " | ".join(parts)


def _summary(rows: list[dict], cfg: dict) -> list[str]:
    built = [r for r in rows if r["built"]]
    ours = [r for r in built if r["netslim"]["status"] == "ok"]
    exact = [r for r in ours if r["netslim"]["max_relative_error"] <= 1e-4]
    theirs = [r for r in built if r["torch_pruning"]["status"] == "ok"]
    reduced = [r for r in theirs if r["torch_pruning"]["params_ratio"] < 1]
    both = [r for r in ours if r in theirs]
    notes = [f"{len(built)} of {len(rows)} models built; netslim pruned {len(ours)} ({len(exact)} of them equal to the "
             f"masked model within 1e-4 at both input sizes); Torch-Pruning ran without error on {len(theirs)} (its "
             f"pruned model runs at both input sizes), {len(reduced)} of them with fewer parameters."]
    for clock, key in (("CPU", "cpu_seconds"), ("wall-clock", "seconds")):
        if not both:
            break
        ours_s = sum(r["netslim"][key] for r in both)
        theirs_s = sum(r["torch_pruning"][key] for r in both)
        per_model = statistics.median(r["netslim"][key] / r["torch_pruning"][key] for r in both)
        notes.append(f"On the {len(both)} models both pruned, {clock} time: netslim {ours_s:.1f} s in all, "
                     f"Torch-Pruning {theirs_s:.1f} s (ratio netslim / Torch-Pruning {ours_s / theirs_s:.2f}; "
                     f"median of the per-model ratios {per_model:.2f}).")
    notes.append("BN channels counts every BN's channels; netslim ranks a channel shared by several BNs (a residual "
                 "stream, a concatenation read by selection BNs) once, so its BN-channel fraction can differ from "
                 "the pruned fraction.")
    return notes


# -- the BENCHMARKS.md section (rendered by run_all.py, which adds the notes and provenance) --

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _cell(r: dict) -> list[str]:
    if r["status"] != "ok":
        where = f" ({r['stage']})" if r.get("stage") else ""
        return [f"{r['status']}{where}: `{r['error'][:90]}`", "", "", "", ""]
    return ["ok", f"{r['cpu_seconds']:.2f} ({r['seconds']:.2f})", _pct(r["params_ratio"]), _pct(r["flops_ratio"]),
            _pct(r["bn_channels_ratio"])]


def markdown(rec: dict) -> str:
    s = rec["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in rec["results"]["versions"].items() if v)
    lines = ["## Real models from timm, torchvision, Ultralytics and smp\n",
             "Model definitions nobody here wrote, built by their own libraries with random weights; BN scales, "
             "shifts and statistics randomized from a seeded generator. Both tools prune "
             f"{100 * s['percent']:.0f}% of the channels by a global |γ| ranking on a 1x3x{s['size']}x{s['size']} "
             "example. netslim: analysis + plan + surgery; the compact model is compared with the masked one "
             "(pruned γ zeroed) on the example and on a 2x3x"
             f"{s['other']}x{s['other']} input (max relative error over every output tensor). Torch-Pruning: "
             "`BNScalePruner` with `BNScaleImportance`, global, its defaults, output layers ignored (classifier, "
             "Detect/Segment head, segmentation head); its pruned model is run on both inputs, its fidelity is not "
             f"measured. Time: process CPU time (wall clock in brackets), median of {s['repeats']} run(s) after "
             f"{s['warmup']} warm-up run(s), {rec['torch_set_num_threads']} thread(s). Params, "
             "FLOPs (`netslim.count_flops`, one example) and BN channels: after / before. Limits per tool: "
             f"{s['limit_s']} s per run, {s['memory_gb']} GB of extra address space. Needs timm, torchvision, "
             "ultralytics, segmentation-models-pytorch and torch-pruning installed.\n",
             "| model | netslim | time (s): CPU (wall) | params | FLOPs | BN channels | channels pruned (of prunable) "
             "| max rel. error (example / other size) | Torch-Pruning | time (s): CPU (wall) | params | FLOPs "
             "| BN channels |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rec["results"]["models"]:
        if not row["built"]:
            lines.append(f"| {row['model']} | not built: `{row['error'][:90]}` ||||||||||||")
            continue
        ours = row["netslim"]
        ok = ours["status"] == "ok"
        n = ours.get("channels_prunable")
        share = f"{_pct(ours['channels_pruned'] / n)} of {n}" if ok else ""
        err = f"{ours['errors']['example']:.1e} / {ours['errors']['other']:.1e}" if ok else ""
        lines.append(f"| {row['model']} | " + " | ".join(_cell(ours)) + f" | {share} | {err} | "
                     + " | ".join(_cell(row["torch_pruning"])) + " |")
    lines += ["", f"Versions: {versions}.", ""] + _explanations(rec["results"]["models"], s["percent"])
    return "\n".join(lines)


def _explanations(rows: list[dict], percent: float) -> list[str]:
    """Where netslim kept channels: ops its analysis could not narrow, and plans short of the percent asked."""
    ours = {r["model"]: r["netslim"] for r in rows if r["built"] and r["netslim"]["status"] == "ok"}
    fixed = {m: r for m, r in ours.items() if r["fixed_notes"]}
    short = {m: r for m, r in ours.items() if r["channels_pruned"] < math.floor(r["channels_prunable"] * percent)}
    lines = []
    if fixed:
        lines += ["Channels netslim's analysis kept (`trace_channels(...).notes`; how many, and the first):", ""]
        lines += [f"- {m}: {r['fixed_notes']}, e.g. {r['first_notes'][0]}" for m, r in fixed.items()] + [""]
    if short:
        listed = ", ".join(f"{m} ({100 * r['channels_pruned'] / r['channels_prunable']:.1f}%; "
                           f"{r.get('selection_bns', '?')} selection BNs, guards on {len(r.get('guarded', []))} layers)"
                           for m, r in short.items())
        lines += [f"Plans that removed fewer than {100 * percent:.0f}% of the prunable channels: {listed}. A channel "
                  "read by a selection BN whose own output channel is kept is kept too "
                  "(`ChannelGraph.close_selection`, after the global ranking).", ""]
    return lines

if __name__ == "__main__":
    main()

"""The latency planner on a busy machine: `netslim prune --target-speedup 2 --target cpu` on VGG-19 while
another CPU-bound process runs beside it.

VGG-19 (CIFAR size, batch 1, BN scales from a seeded generator, saved as a checkpoint) is pruned by the
command line, in this process, with a fresh latency cache: the tables are measured under the load, as they
were when a busy machine's tables refused every later plan ("a latency of 34.9 ms cannot be reached:
pruning as much as the guards allow is predicted at 287 ms"). The other process is a Python busy loop
started before the tables and ended after the judging. Then the same command runs again on the tables the
first run cached (if any). Judged: the compact model against the original, both BN folded, timed in turns
three times after planning (the median), still under the load. Done when within 15% of the speedup asked.

Usage: python benchmarks/latency_under_load.py [--full | --smoke] [--threads N]
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import netslim
from common import Goal, begin, finish, note_lines, randomize_bn
from netslim.checkpoint import describe, load_model, save_checkpoint
from netslim.cli import main as netslim_main
from netslim.timing import deployed_latencies

NAME = "latency_under_load"
SETTINGS = {
    "full": {"model": "vgg19", "size": 32, "speedup": 2.0, "within": 0.15},
    "quick": {"model": "vgg19", "size": 32, "speedup": 2.0, "within": 0.15},
    "smoke": {"model": "mlp", "size": None, "speedup": 1.5, "within": None},
}


@contextlib.contextmanager
def busy_process():
    """Another CPU-bound process beside this one (a Python busy loop), for as long as the block runs."""
    hog = subprocess.Popen([sys.executable, "-c", "while True:\n    pass"])
    try:
        yield hog
    finally:
        hog.kill()
        hog.wait()


def _prune(checkpoint: Path, out: Path, speedup: float, cache: Path) -> dict:
    """``netslim prune CHECKPOINT --target-speedup X --target cpu`` with ``cache`` as NETSLIM_CACHE: its exit
    code, seconds, the lines it printed about latency, and the warnings it gave."""
    os.environ["NETSLIM_CACHE"] = str(cache)
    printed, said = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(said), warnings.catch_warnings():
        code = netslim_main(["prune", str(checkpoint), "--target-speedup", str(speedup), "--target", "cpu",
                             "--out", str(out), "--overwrite"])
    lines = printed.getvalue().splitlines()
    return {"exit": code, "seconds": round(time.perf_counter() - started, 1),
            "rounds": [line.strip() for line in lines if "planning round" in line],
            "latency_line": next((line for line in lines if line.startswith("latency at batch")), ""),
            "stderr": said.getvalue().strip().splitlines()}


def _judged(original: torch.nn.Module, compact_path: Path, x: torch.Tensor) -> list[float]:
    """Three speedups of the compact model over the original, each timed in turns (BN folded, eager)."""
    compact, _ = load_model(compact_path)
    return [round(a / b, 3) for a, b in (deployed_latencies([original, compact.eval()], x) for _ in range(3))]


def main(argv: list[str] | None = None) -> dict:
    run = begin(__doc__, argv, SETTINGS)
    settings = run.settings
    model = randomize_bn(netslim.models.create_model(settings["model"], {})).eval()
    if settings["size"]:
        model.input_size = (3, settings["size"], settings["size"])
    x = torch.zeros(1, *model.input_size)
    results, notes = {"model": settings["model"], "speedup_asked": settings["speedup"]}, []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        checkpoint = folder / "model.pt"
        save_checkpoint(checkpoint, {"arch": {**describe(model, settings["model"]),
                                              "input_size": list(model.input_size)},
                                     "state_dict": model.state_dict()})
        with busy_process():
            for name in ("fresh tables", "cached tables"):
                pruned = _prune(checkpoint, folder / "compact.pt", settings["speedup"], folder / "cache")
                if pruned["exit"] == 0:
                    pruned["judged_speedups"] = _judged(model, folder / "compact.pt", x)
                    pruned["judged_speedup"] = statistics.median(pruned["judged_speedups"])
                results[name] = pruned
    for name in ("fresh tables", "cached tables"):
        r = results[name]
        if r["exit"] != 0:
            notes.append(f"{name}: refused ({r['stderr'][-1] if r['stderr'] else 'exit ' + str(r['exit'])})")
            continue
        judged = r["judged_speedup"]
        within = settings["within"]
        verdict = "" if within is None else (" (within" if abs(judged / settings["speedup"] - 1) <= within
                                              else " (NOT within") + f" {100 * within:.0f}%)"
        notes.append(f"{name}: {settings['model']} --target-speedup {settings['speedup']:g} beside a busy process: "
                     f"judged {judged:.2f}x (timings {', '.join(f'{s:.2f}' for s in r['judged_speedups'])})"
                     f"{verdict}, planned in {r['seconds']:.0f} s, {len(r['rounds'])} rounds; "
                     f"{len(r['stderr'])} warning line(s)")
    return finish(NAME, run, results, notes)


def markdown(rec: dict) -> str:
    """The BENCHMARKS.md section of a result."""
    r = rec["results"]
    rows = ["| tables | exit | judged speedup (median of 3) | timings | planning | warnings |",
            "|---|---|---|---|---|---|"]
    for name in ("fresh tables", "cached tables"):
        p = r.get(name, {})
        judged = f"{p['judged_speedup']:.2f}x" if "judged_speedup" in p else "-"
        timings = ", ".join(f"{s:.2f}" for s in p.get("judged_speedups", []))
        warned = "; ".join(line.replace("netslim: warning: ", "") for line in p.get("stderr", [])) or "none"
        rows.append(f"| {name} | {p.get('exit')} | {judged} | {timings} | {p.get('seconds')} s | {warned} |")
    return (f"`netslim prune {r['model']} --target-speedup "
            f"{r['speedup_asked']:g} --target cpu` while a Python busy loop runs beside it (the tables measured "
            "under that load into a fresh cache, then the command again on what it cached); judged by timing the "
            "compact model against the original in turns, three times after planning, still under the load.\n\n"
            + "\n".join(rows) + "\n\n" + note_lines(rec))


def goals(rec: dict) -> list[Goal]:
    """The summary row: the speedups judged under load against the one asked."""
    r = rec["results"]
    judged = [f"{r[name]['judged_speedup']:.2f}x ({name})" if "judged_speedup" in r[name] else f"refused ({name})"
              for name in ("fresh tables", "cached tables") if name in r]
    return [Goal(f"latency target met on a busy machine (within {100 * rec['settings']['within']:.0f}%)"
                 if rec["settings"].get("within") else "latency target met on a busy machine",
                 f"`netslim prune {r['model']} --target-speedup {r['speedup_asked']:g}` beside a busy process",
                 "judged " + ", ".join(judged))]


if __name__ == "__main__":
    main()

"""Shared helpers of the benchmarks: timing, the machine record, CLI modes, JSON results, and the pieces
of markdown every BENCHMARKS.md section uses (benchmarks/render.py assembles the document).

Every benchmark script has ``main(argv) -> dict`` with three modes: ``--full`` (the default; the
figures in BENCHMARKS.md), ``--quick`` (under a minute) and ``--smoke`` (tiny models, a few
seconds, overriding the other two: what tests/test_benchmarks.py runs so the scripts cannot rot;
its numbers mean nothing).
Results land in ``benchmarks/results/<name>_<mode>.json`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from netslim.latency_cache import cpu_model
from netslim.testing import randomize_bn  # noqa: F401  (the benchmarks import it from here)

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("smoke", "quick", "full")


def median_time(fn: Callable[[], object], warmup: int = 1, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` in seconds (``time.perf_counter``), after ``warmup`` untimed calls."""
    return statistics.median(times(fn, warmup, repeats)["wall"])


def times(fn: Callable[[], object], warmup: int = 1, repeats: int = 5) -> dict[str, list[float]]:
    """Wall (``perf_counter``) and process CPU (``process_time``) times of ``repeats`` calls of ``fn()``
    after ``warmup`` untimed calls: ``{"wall": [...], "cpu": [...]}``."""
    for _ in range(warmup):
        fn()
    out: dict[str, list[float]] = {"wall": [], "cpu": []}
    for _ in range(repeats):
        _timed(fn, out)
    return out


def _timed(fn: Callable[[], object], out: dict[str, list[float]]) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    out["cpu"].append(time.process_time() - cpu)
    out["wall"].append(time.perf_counter() - wall)


def interleaved_times(fns: Mapping[str, Callable[[], object]], warmup: int = 1,
                      repeats: int = 5) -> dict[str, dict[str, list[float]]]:
    """Time several variants side by side: each repeat runs every variant once, in a rotated order.

    Alternating A/B/C within one run cancels slow drift (thermal state, other load on the machine)
    that would bias variants timed one block after another; rotating the order cancels any effect
    of running right after a particular other variant. Returns ``{name: {"wall": [...], "cpu": [...]}}``:
    wall clock and the process's CPU time. With one compute thread, CPU time leaves out the time the
    process waited for a core while other processes ran: on a shared machine it is the steadier figure.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            _timed(fns[name], out[name])
    return out


def summaries(samples: Mapping[str, Sequence[float]]) -> dict[str, dict]:
    """:func:`summary` of each clock's samples."""
    return {clock: summary(values) for clock, values in samples.items()}


def ratios(numerator: Mapping[str, Sequence[float]], denominator: Mapping[str, Sequence[float]]) -> dict:
    """Per clock: the ratio of medians, the median of paired per-repeat ratios and the ratio of minima."""
    return {clock: {"ratio": statistics.median(numerator[clock]) / statistics.median(denominator[clock]),
                    "paired": paired_ratio(numerator[clock], denominator[clock]),
                    "min": min(numerator[clock]) / min(denominator[clock])} for clock in numerator}


def summary(samples: Sequence[float]) -> dict:
    """Median, quartiles, min and count of timing samples (seconds)."""
    s = sorted(samples)
    q = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0]] * 3
    return {"median": statistics.median(s), "q25": q[0], "q75": q[2], "min": s[0], "n": len(s)}


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of the per-repeat ratios of interleaved samples (robust to drift between repeats)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def commit() -> str | None:
    """The commit the code was measured at (with '+changes' when the tree differs from it), if in git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, text=True,
                              capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"],
                               cwd=Path(__file__).parent.parent, text=True, capture_output=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if dirty.strip() else "")


def machine_record() -> dict:
    """Where and with what a result was measured."""
    return {
        "commit": commit(),
        "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu_model(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_num_threads": torch.get_num_threads(),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        # other processes' load while measuring (1, 5, 15 min averages): timings on a busy machine are slower
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="the full measurement (default)")
    mode.add_argument("--quick", action="store_true", help="fewer repeats / smaller sizes (< 60 s)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny models and 1-2 repeats, for the test suite (numbers meaningless); overrides the mode")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (default 1: on a small shared machine, OpenMP threads that "
                        "compete with other processes for the cores slow down by orders of magnitude)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    return p


def mode_of(args: argparse.Namespace) -> str:
    return "smoke" if args.smoke else "quick" if args.quick else "full"


def set_threads(args: argparse.Namespace) -> int:
    """Call ``torch.set_num_threads`` explicitly (recorded in every result) and return the count."""
    n = args.threads if args.threads and args.threads > 0 else torch.get_num_threads()
    torch.set_num_threads(n)
    return n


def command(script: str, argv: Sequence[str]) -> str:
    """The exact command line that reproduces a result (``--out`` left out)."""
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--out":
            skip = True
            continue
        if a.startswith("--out="):
            continue
        args.append(a)
    return shlex.join(["python", f"benchmarks/{script}", *args])


def record(name: str, args: argparse.Namespace, argv: Sequence[str], threads: int, settings: dict,
           results: dict, notes: Sequence[str] = (), started: float | None = None) -> dict:
    mode = mode_of(args)
    return {
        "benchmark": name, "mode": mode, "command": command(f"{name}.py", argv),
        "machine": machine_record(), "torch_set_num_threads": threads, "settings": settings,
        "results": results, "notes": list(notes),
        "wall_seconds": None if started is None else round(time.perf_counter() - started, 1),
    }


@dataclass
class Run:
    """What every benchmark's ``main`` starts from: its arguments, start time, thread count, settings."""

    argv: list[str]
    args: argparse.Namespace
    started: float
    threads: int
    settings: dict
    commit: str | None = None  # the code measured: the commit when the run began (the tree may move meanwhile)


def begin(doc: str, argv: Sequence[str] | None, settings_by_mode: dict) -> Run:
    """Parse the standard options, start the clock, set the thread count, pick the mode's settings."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(doc.splitlines()[0]).parse_args(argv)
    started = time.perf_counter()
    threads = set_threads(args)
    return Run(argv, args, started, threads, settings_by_mode[mode_of(args)], commit())


def finish(name: str, run: Run, results: dict, notes: Sequence[str], echo_notes: bool = True) -> dict:
    """Record, write and announce a benchmark's result; returns the record."""
    rec = record(name, run.args, run.argv, run.threads, run.settings, results, notes, run.started)
    rec["machine"]["commit"] = run.commit
    print(f"wrote {write_result(rec, run.args.out)}")
    if echo_notes:
        for line in notes:
            print(line)
    return rec


def write_result(rec: dict, out: Path | str = RESULTS) -> Path:
    """Write ``rec`` to ``<out>/<benchmark>_<mode>.json`` (non-finite numbers as null)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return write_json(rec, out / f"{rec['benchmark']}_{rec['mode']}.json")


def write_json(rec: dict, path: Path) -> Path:
    """Write ``rec`` as JSON at ``path`` (non-finite numbers as null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(rec), indent=1, default=str) + "\n")
    return path


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def synthetic_jpegs(folder: Path | str, n: int, classes: int = 10, seed: int = 0) -> dict:
    """Write ``n`` JPEGs of ImageNet's size and weight into ``folder/train/c<k>/`` (ImageNet train averages
    about 400x350 pixels and 110 KB): a smooth random colour field plus grain, 300-640 x 240-480 pixels,
    quality 90. Returns ``{"root", "files", "mean_kb", "mean_pixels"}``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(folder)
    sizes, pixels, files = [], [], []
    for i in range(n):
        w, h = int(rng.integers(300, 641)), int(rng.integers(240, 481))
        field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h),
                                                                                        Image.Resampling.BICUBIC)
        grain = np.asarray(field, dtype=np.float32) + rng.normal(0, 20, (h, w, 3))
        path = root / "train" / f"c{i % classes}" / f"{i:06d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grain.clip(0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)
        sizes.append(path.stat().st_size)
        pixels.append(w * h)
        files.append(path)
    return {"root": root, "files": files, "mean_kb": sum(sizes) / len(sizes) / 1e3,
            "mean_pixels": sum(pixels) / len(pixels)}


# -- the pieces of markdown every section uses (each script's markdown() writes its section's body) --

@dataclass(frozen=True)
class Goal:
    """One row of BENCHMARKS.md's summary: what is promised, what was measured, the figure that says whether
    it holds, and the records it comes from (when not all of its section's: freshness is judged on these)."""

    goal: str
    measured: str
    figure: str
    records: tuple[dict, ...] = ()


def ms(seconds: float) -> str:
    return f"{1e3 * seconds:.2f} ms" if seconds < 0.1 else f"{1e3 * seconds:.0f} ms"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def note_lines(rec: dict) -> str:
    """A record's notes as a markdown list."""
    return "".join(f"- {n}\n" for n in rec.get("notes", []))


def ratio_estimates(q: dict) -> str:
    """'median, paired, min (wall)' of a :func:`ratios` result: the CPU-time estimates, wall clock in brackets."""
    c = q["cpu"]
    return f"{c['ratio']:.4f}, {c['paired']:.4f}, {c['min']:.4f} ({q['wall']['ratio']:.4f})"


def direct_caveat(q: dict, goal: float, noise: float, what: str, name: str = "") -> str:
    """A sentence when a directly measured ratio lies above the goal (it is within the noise, or it is not)."""
    above = {k: v for k, v in (("CPU median", q["cpu"]["ratio"]), ("paired", q["cpu"]["paired"]),
                               ("minima", q["cpu"]["min"]), ("wall", q["wall"]["ratio"])) if v >= goal}
    if not above:
        return ""
    who = f" for {name}" if name else ""
    listed = ", ".join(f"{k} {v:.4f}" for k, v in above.items())
    if max(above.values()) - 1 <= noise:
        return (f" The directly measured ratio{who} is above the goal in some estimates ({listed}), but by less than "
                f"the {what}-to-{what} noise ({100 * noise:.1f}%): a direct difference cannot confirm or refute the "
                "in-situ figure on this shared machine; a dedicated one with many more repeats would.")
    return (f" The directly measured ratio{who} ({listed}) exceeds the goal by more than the {what}-to-{what} noise "
            f"({100 * noise:.1f}%): an overhead the in-situ accounting does not see may exist.")


def provenance(records: Sequence[dict]) -> str:
    """Command, machine and date of a section's records (several: one command run with several seeds).

    Reads every record layout the scripts have written: ``common.record``'s (``wall_seconds``,
    ``torch_set_num_threads``, machine ``cpu_count``, ``load_average``) and the older ones of the accuracy,
    fidelity and Torch-Pruning scripts (``seconds``, machine ``threads``, ``cores``, ``load_average_1min``)."""
    rec, m = records[0], records[0].get("machine", {})
    seeds = ", ".join(str(r.get("seed", r.get("results", {}).get("seed", 0))) for r in records)
    minutes = [f"{t / 60:.0f}" for r in records if (t := r.get("wall_seconds", r.get("seconds"))) is not None]
    took = f" ({rec['mode']} mode, {rec['wall_seconds']} s)" if len(records) == 1 and "wall_seconds" in rec else \
        f" ({', '.join(minutes)} min)" if minutes else ""
    command = rec.get("command", f"python benchmarks/{rec.get('benchmark', '?')}.py")
    cores = m.get("cpu_count", m.get("cores"))
    threads = rec.get("torch_set_num_threads", m.get("torch_num_threads", m.get("threads")))
    load = m.get("load_average") or ([m["load_average_1min"]] if "load_average_1min" in m else None)
    load_text = ", ".join(f"{round(x, 2):g}" for x in load or [])
    first = " of the first" if len(records) > 1 else ""
    span = "1/5/15 min" if load and len(load) == 3 else "1 min"
    parts = [m.get("gpu"), m.get("cpu", "?") + (f" ({cores} cores)" if cores else ""), m.get("platform"),
             f"Python {m['python']}" if m.get("python") else None, f"torch {m.get('torch', '?')}"]
    return (f"Command: `{command}`" + (f" with `--seed` {seeds}" if len(records) > 1 else "")
            + f"{took}  \n"
            f"Machine: {', '.join(p for p in parts if p)}"
            + (f"; `torch.set_num_threads({threads})`" if threads else "")
            + (f"; load average ({span}) at the end{first}: {load_text}" if load else "")
            + "  \n"
            f"Date: {m.get('date', '?')}\n")

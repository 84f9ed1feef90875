"""Re-measure the benchmarks and render BENCHMARKS.md from their records: the one command for both.

Usage:
  python benchmarks/run_all.py --render    # only rebuild BENCHMARKS.md from benchmarks/results/*.json
  python benchmarks/run_all.py --quick     # the quick mode of every section that shows one (~1 min each), render
  python benchmarks/run_all.py --full      # every section this machine can re-measure (hours), then render
  python benchmarks/run_all.py --full --only latency zoo   # some sections

What each section runs, the records it shows and the code it measures are listed in render.SECTIONS.
A section whose packages, dataset or GPU this machine lacks is skipped, and the reason printed. Each
command runs in its own process (a clean allocator and thread pool), one at a time, so no two timings
compete for the cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import subprocess
import sys
import time

from render import DOC, ROOT, SECTIONS, Section, render


def missing(section: Section) -> list[str]:
    """What this machine lacks of the section's needs (modules, "cuda", "fashion-mnist")."""
    lacking = []
    for need in section.needs:
        if need == "cuda":
            import torch

            if not torch.cuda.is_available():
                lacking.append("a CUDA device")
        elif need == "fashion-mnist":
            from netslim.data.mnist import load_fashion_mnist

            try:
                load_fashion_mnist(split="test", download=False)
            except Exception:  # not found, or unreadable: either way the experiments cannot run here
                lacking.append("Fashion-MNIST (Debian's dataset-fashion-mnist, or netslim's cache)")
        elif importlib.util.find_spec(need) is None:
            lacking.append(need)
    return lacking


def commands(section: Section, mode: str) -> list[list[str]]:
    """The section's command lines for ``mode``: its recorded full-mode commands, or the script's quick mode."""
    lines = section.run if mode == "full" else (f"benchmarks/{section.script}.py --quick --threads 1",)
    return [[sys.executable, *shlex.split(line)] for line in lines]


def run(mode: str, names: list[str]) -> None:
    for section in SECTIONS:
        if section.name not in names or (mode == "quick" and not section.quick):
            continue
        lacking = missing(section)
        if lacking:
            print(f"== {section.name}: skipped, this machine lacks {', '.join(lacking)}", flush=True)
            continue
        for cmd in commands(section, mode):
            print(f"== {shlex.join(cmd[1:])}", flush=True)
            started = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT)
            print(f"== {section.name}: {time.perf_counter() - started:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="re-measure the benchmarks and render BENCHMARKS.md")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full", action="store_true", help="every section's full mode this machine can run")
    mode.add_argument("--quick", action="store_true", help="the quick mode of the sections that show one")
    mode.add_argument("--render", action="store_true", help="only render BENCHMARKS.md from the records")
    p.add_argument("--only", nargs="+", choices=[s.name for s in SECTIONS], default=[s.name for s in SECTIONS],
                   help="the sections to re-measure (by script name)")
    args = p.parse_args(argv)
    if not args.render:
        run("full" if args.full else "quick", args.only)
    render()
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()

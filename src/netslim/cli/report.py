"""``netslim report``: plots of a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..report import write_report


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("report", help="plots of a run folder (γ distribution, widths, γ along training)")
    p.add_argument("run_dir")


def run(args: argparse.Namespace) -> int:
    for path in write_report(Path(args.run_dir)):
        print(path)
    return 0

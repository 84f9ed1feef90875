"""The ``netslim`` command line: a thin shell that parses, validates and calls the library.

One module per subcommand, each with ``add_parser(subparsers)`` and ``run(args)``, which calls one
library function. User errors (bad options, missing files, unfit checkpoints) print one line and exit
with 2; anything else is an internal error: one line, exit 3 (set NETSLIM_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import warnings

from ..errors import one_line
from . import export, finetune, info, prune, report, run, train
from .common import Parser, UsageError

__all__ = ["EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_USAGE", "UsageError", "build_parser", "main"]

EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 3, 130
SUBCOMMANDS = (train, prune, finetune, run, info, export, report)  # in the order --help lists them
COMMANDS = {module.__name__.rpartition(".")[2]: module.run for module in SUBCOMMANDS}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="netslim", description="Network slimming: sparsity training, pruning, fine-tuning.")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each ("netslim: warning: ..."), not a source path and a line of code."""
    print(f"netslim: warning: {one_line(message) if isinstance(message, BaseException) else message}",
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
        print(f"netslim: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.EROFS):
            return _internal(e)
        full = e.errno == errno.ENOSPC and "disk is full" not in str(e)
        print(f"netslim: error: {'the disk is full: ' if full else ''}{one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # an internal error: say so in one line, keep the traceback for debugging
        return _internal(e)


def _internal(e: BaseException) -> int:
    if os.environ.get("NETSLIM_DEBUG"):
        raise e
    print(f"netslim: internal error: {type(e).__name__}: {one_line(e)} (set NETSLIM_DEBUG=1 for details)",
          file=sys.stderr)
    return EXIT_INTERNAL

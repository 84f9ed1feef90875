"""Every code block of README.md and docs/*.md runs as a test, read top to bottom like the page.

The library is Sybil (https://sybil.readthedocs.io), chosen over pytest-markdown-docs and
pytest-codeblocks because a guide is one story and Sybil runs it as one:

- a document is one namespace: a later block uses what an earlier block made, as a reader would;
- each fenced block is its own pytest item, named by file and line, so a failure points at the block;
- blocks of other languages go to evaluators of our own: ``bash`` runs in a shell with the ``netslim``
  under test on PATH, a block whose first line is ``# file: NAME`` is written to NAME (a config, your
  own model module) for the blocks after it;
- setup and teardown per document: each page runs in a scratch folder with the small files it reads
  (a tiny YOLO dataset), written here, so nothing is downloaded;
- skip directives with a reason, decided when the page runs (``<!-- skip: start if(missing("ultralytics"),
  reason="...") -->``): ``pytest -rs`` prints why. pytest-markdown-docs runs Python blocks only, each
  alone unless chained; pytest-codeblocks runs shell blocks too but has neither per-document setup nor
  conditional skips.

The hook that collects the pages is in the repository's root ``conftest.py``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/*.md"]
LANGUAGES = ("python", "bash", "yaml")  # every fenced block of a page is one of these (tests/test_docs.py)
SHELL_TIMEOUT = 600
_FILE = re.compile(r"#\s*file:\s*(\S+)\s*\n")


def missing(*packages: str) -> bool:
    """For skip directives: whether any of ``packages`` cannot be imported here."""
    return any(importlib.util.find_spec(name) is None for name in packages)


def write_yolo_dataset(root: Path, train: int = 16, val: int = 8, size: int = 64) -> Path:
    """A tiny two-class detection dataset in the YOLO format (PNG images, one label .txt per image)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, lines = np.full((size, size, 3), 40, np.uint8), []
            for _ in range(2):
                c = int(rng.integers(2))
                w, h = (int(v) for v in rng.integers(size // 5, size // 2, 2))
                x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                image[y0:y0 + h, x0:x0 + w] = (220, 60, 60) if c == 0 else (60, 60, 220)
                lines.append(f"{c} {(x0 + w / 2) / size:.5f} {(y0 + h / 2) / size:.5f} {w / size:.5f} {h / size:.5f}")
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    data = root.parent / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: red\n  1: blue\n")
    return data


def _commands(folder: Path) -> None:
    """``netslim`` and ``python`` as a reader's activated environment has them, for the code under test:
    this interpreter, with its own sys.path (not an installed copy from elsewhere)."""
    folder.mkdir()
    (folder / "netslim").write_text(f"#!{sys.executable}\nimport sys\nfrom netslim.cli import main\n"
                                    "sys.exit(main())\n")
    (folder / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for name in ("netslim", "python"):
        (folder / name).chmod(0o755)


def setup(namespace: dict) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="netslim-docs-"))
    _commands(scratch / ".bin")
    namespace["__scratch__"], namespace["__cwd__"] = scratch, os.getcwd()
    namespace["missing"] = missing
    import netslim  # the package under test: the shell blocks' netslim imports this one, wherever they run

    paths = [str(Path(netslim.__file__).resolve().parents[1])]
    paths += [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    namespace["__env__"] = dict(os.environ, PATH=f"{scratch / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                                PYTHONPATH=os.pathsep.join(paths), YOLO_OFFLINE="1")
    # for the Python blocks too: Ultralytics downloads no font, weight or version; latency tables are cached
    # in the scratch folder, not in the reader's home
    namespace["__environ__"] = {k: os.environ.get(k) for k in ("YOLO_OFFLINE", "NETSLIM_CACHE")}
    os.environ.update(YOLO_OFFLINE="1", NETSLIM_CACHE=str(scratch / "cache"))
    namespace["__env__"].update(NETSLIM_CACHE=str(scratch / "cache"))
    work = scratch / "work"
    work.mkdir()
    if not missing("PIL", "numpy"):
        write_yolo_dataset(work / "shapes")
    os.chdir(work)
    sys.path.insert(0, str(work))  # as for a reader who runs Python in that folder: its modules import
    namespace["__modules__"] = set(sys.modules)


def teardown(namespace: dict) -> None:
    os.chdir(namespace["__cwd__"])
    work = str(namespace["__scratch__"] / "work")
    if work in sys.path:
        sys.path.remove(work)
    for name in set(sys.modules) - namespace["__modules__"]:  # modules of the page's own files (mypkg)
        if (getattr(sys.modules[name], "__file__", None) or "").startswith(work):
            del sys.modules[name]
    for name, value in namespace["__environ__"].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(namespace["__scratch__"], ignore_errors=True)


def _written(example) -> bool:
    """A block that starts with ``# file: NAME`` is written to NAME (relative to the page's folder)."""
    match = _FILE.match(example.parsed)
    if match is None:
        return False
    path = Path(match.group(1))
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"# file: {path} must name a file inside the page's folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(example.parsed)
    return True


def run_python(example) -> None:
    from sybil.evaluators.python import PythonEvaluator

    if not _written(example):
        PythonEvaluator()(example)


def run_shell(example) -> str | None:
    """The block as a reader pastes it into a shell: stop at the first failing command."""
    if _written(example):
        return None
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", str(example.parsed)], env=example.namespace["__env__"],
                          capture_output=True, text=True, timeout=SHELL_TIMEOUT)
    if done.returncode != 0:
        return (f"exit status {done.returncode}\n--- stdout (end) ---\n{done.stdout[-4000:]}\n"
                f"--- stderr (end) ---\n{done.stderr[-4000:]}")
    return None


def run_yaml(example) -> None:
    """A YAML block is a file the next blocks read: it must name it (``# file: NAME``) and parse."""
    import yaml

    yaml.safe_load(str(example.parsed))
    if not _written(example):
        raise ValueError("a yaml block must start with '# file: NAME' (the file the next blocks read)")


def pages():
    """The Sybil that collects the pages (imported here: tests/test_docs.py needs none of it)."""
    from sybil import Sybil
    from sybil.parsers.markdown import CodeBlockParser, SkipParser

    return Sybil(parsers=[CodeBlockParser("python", run_python), CodeBlockParser("bash", run_shell),
                          CodeBlockParser("yaml", run_yaml), SkipParser()],
                 patterns=PAGES, path=str(ROOT), setup=setup, teardown=teardown)

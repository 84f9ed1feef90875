"""Latency tables kept on disk between runs (netslim.latency): one JSON file per machine, PyTorch version,
thread count and backend, ``{layer shape key: {"in,out": seconds}}``.

A cache file is data another run wrote, possibly killed half-way, edited, or taken on a busy machine, so
nothing in it is trusted: every entry must be a map of two positive widths to a finite positive time, and a
layer's entry must hold exactly the widths that layer is probed at (:func:`netslim.latency.probe_pairs`).
What fails is measured again, and the file is rewritten, with one warning naming it. Whether the entries
agree with the model measured now is :func:`netslim.latency.measure_table`'s check.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import torch

from .runfolder import write_atomic

Samples = dict[tuple[int, int], float]
MAX_WIDTH = 1 << 20  # channels: more than any layer has, fewer than a file could ask to allocate
MAX_SECONDS = 3600.0


def default_cache_dir() -> Path:
    return Path(os.environ.get("NETSLIM_CACHE", Path.home() / ".cache" / "netslim")) / "latency"


def cache_file(cache_dir: str | Path | None, example_input: torch.Tensor, backend: str) -> Path:
    """The file holding the tables of this machine for ``example_input``'s device on ``backend``."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"{_machine_key(example_input, backend)}.json"


def _machine_key(example_input: torch.Tensor, backend: str = "eager") -> str:
    device = example_input.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or
                                                                             platform.machine())
    # ONNX Runtime probes are timed without spinning since this key's "no spinning" (see timing.ort_session)
    version = f"onnxruntime {__import__('onnxruntime').__version__} no spinning" if backend == "onnxruntime" \
        else "eager"
    version += " | grid by blocks of 16, probes past them"  # the samples' layout (netslim.layer_law)
    text = f"{name}|{cpu_model()}|torch {torch.__version__}|threads {torch.get_num_threads()}|{device.type}|{version}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def cpu_model() -> str:
    """The CPU's model name (what latency tables and benchmark records are keyed by)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read(path: Path) -> tuple[dict[str, Samples], str]:
    """The well-formed layer tables cached in ``path``, and what was wrong with the rest ("" when nothing)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}, ""
    except (OSError, UnicodeDecodeError) as e:
        return {}, f"unreadable: {e.strerror if isinstance(e, OSError) else 'not text'}"
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        return {}, "not JSON (truncated?)"
    if not isinstance(raw, dict):
        return {}, f"a JSON {type(raw).__name__}, not layer tables"
    tables, bad = {}, []
    for key, points in raw.items():
        samples = _samples(points)
        if samples is None:
            bad.append(key)
        else:
            tables[key] = samples
    return tables, f"{len(bad)} of {len(raw)} layer tables malformed" if bad else ""


def _samples(points) -> Samples | None:
    """``{"in,out": seconds}`` as ``{(in, out): seconds}``, or None when any entry is not two widths and a time."""
    if not isinstance(points, dict) or not points:
        return None
    samples = {}
    for pair, seconds in points.items():
        widths = pair.split(",")
        if len(widths) != 2 or not all(w.isascii() and w.isdigit() for w in widths):
            return None
        n_in, n_out = int(widths[0]), int(widths[1])
        if not (1 <= n_in <= MAX_WIDTH and 1 <= n_out <= MAX_WIDTH):
            return None
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds < MAX_SECONDS:
            return None  # NaN fails the comparison too
        samples[n_in, n_out] = float(seconds)
    return samples


def write(path: Path, tables: dict[str, Samples]) -> None:
    """Replace ``path`` with ``tables`` (whole or not at all); a cache that cannot be written only costs time."""
    try:
        write_atomic(path, json.dumps({key: {f"{i},{o}": t for (i, o), t in samples.items()}
                                       for key, samples in tables.items()}))
    except (OSError, ValueError):
        pass

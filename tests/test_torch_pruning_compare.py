"""The Torch-Pruning comparison benchmark runs (quick mode) and its numbers are sane.

Torch-Pruning is a benchmark-only optional dependency: skipped when it is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch_pruning")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "torch_pruning_compare.py"


def _load():
    spec = importlib.util.spec_from_file_location("torch_pruning_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _numbers(obj):
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)


def test_quick_comparison(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "compare.json"
    result = bench.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert "| netslim |" in capsys.readouterr().out

    assert result["mode"] == "quick"
    for key in ("platform", "cpu", "torch", "torch_pruning", "torch_num_threads", "date", "commit"):
        assert key in result["machine"]
    assert [r["model"] for r in result["models"]] == ["vgg19_narrow", "resnet18"]
    assert all(math.isfinite(x) for x in _numbers(result))

    for row in result["models"]:
        ns = row["netslim"]
        assert set(ns["time_s"]) == {"trace", "plan", "surgery", "total"}
        assert ns["fidelity_vs_masked"] < 1e-4  # the compact model equals netslim's masked reference
        assert ns["nofold_fidelity_vs_zeroed"] < 1e-4
        assert 0 < ns["params"] < row["original"]["params"] and 0 < ns["flops"] < row["original"]["flops"]
        assert set(ns["widths"]) == set(row["tp_default"]["widths"]) and len(ns["widths"]) == row["bn_layers"]
        for key in ("tp_default", "tp_raw"):
            tp = row[key]
            assert set(tp["time_s"]) == {"analysis", "prune", "total"}
            assert 0 < tp["params"] < row["original"]["params"]
            assert 0 <= tp["widths_equal_netslim"] <= row["bn_layers"]
            # post-activation models: Torch-Pruning's result is exactly a BN masking of the channels it removed
            assert tp["fidelity_vs_zeroed"] < 1e-4
        # raw global |γ| ranking (coupled BNs by max) is netslim's ranking: same widths up to a one-channel rounding
        assert row["tp_raw"]["widths_equal_netslim"] >= row["bn_layers"] - 1

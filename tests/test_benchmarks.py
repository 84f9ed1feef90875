"""Smoke tests of the benchmark scripts: each runs its --smoke mode (tiny models, 1-2 repeats) and
must write a JSON result with the expected keys and positive finite numbers. No timing goal is
asserted here: these only keep the scripts from rotting."""

import importlib
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


NAMES = ("regularizer_overhead", "surgery_time", "pipeline_overhead", "inference", "export_speed", "jpeg_stream",
         "latency")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Run every benchmark's smoke mode once, as a function call, into one folder: {name: JSON data}.

    The scripts are imported from benchmarks/; the import path, the modules and the thread count are
    restored after."""
    out = tmp_path_factory.mktemp("bench")
    threads, before = torch.get_num_threads(), set(sys.modules)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        data, modules = {}, {}
        for name in NAMES:
            if name == "inference" and not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
                continue
            modules[name] = importlib.import_module(name)
            rec = modules[name].main(["--quick", "--smoke", "--threads", "1", "--out", str(out)])
            assert rec["benchmark"] == name
            data[name] = _check_file(out, name)
        data["_render"] = importlib.import_module("run_all")
        data["_out"] = out
        yield data
    finally:
        sys.path.remove(str(BENCHMARKS))
        for name in set(sys.modules) - before:
            if str(BENCHMARKS) in str(getattr(sys.modules[name], "__file__", "") or ""):
                del sys.modules[name]
        torch.set_num_threads(threads)


def _check_file(out: Path, name: str) -> dict:
    path = out / f"{name}_smoke.json"
    assert path.exists()
    data = json.loads(path.read_text())
    for key in ("benchmark", "mode", "command", "machine", "torch_set_num_threads", "settings", "results", "notes"):
        assert key in data, key
    assert data["mode"] == "smoke" and data["torch_set_num_threads"] == 1
    assert data["command"].startswith(f"python benchmarks/{name}.py") and "--out" not in data["command"]
    for key in ("platform", "cpu", "torch", "torch_num_threads", "date"):
        assert data["machine"][key], key
    return data


def _positive(value, where=""):
    assert isinstance(value, (int, float)) and not isinstance(value, bool), where
    assert math.isfinite(value) and value > 0, f"{where} = {value}"


def _timing(summaries, where=""):
    """A {"wall": summary, "cpu": summary} of positive finite seconds."""
    assert set(summaries) == {"wall", "cpu"}, where
    for clock, s in summaries.items():
        for key in ("median", "q25", "q75", "min"):
            _positive(s[key], f"{where} {clock} {key}")
        assert s["n"] >= 1


def _ratios(r, where=""):
    for clock in ("wall", "cpu"):
        _positive(r[clock]["ratio"], f"{where} {clock}")
        _positive(r[clock]["paired"], f"{where} {clock} paired")


def test_regularizer_overhead(smoke):
    data = smoke["regularizer_overhead"]
    assert set(data["results"]) == {"vgg11", "preresnet20"}
    for name, r in data["results"].items():
        for variant in ("plain", "foreach", "loop"):
            _timing(r["step_seconds"][variant], f"{name} {variant}")
        _ratios(r["ratio_foreach"], name)
        _ratios(r["ratio_loop"], name)
        for variant in ("foreach", "loop"):
            for clock in ("wall", "cpu"):
                _positive(r["regularizer_us"][variant][clock])
                _positive(r["regularizer_share_of_step"][variant][clock])
            _positive(r["in_step_us"][variant])
            _positive(r["in_step_ratio"][variant])
        assert r["bn_layers"] > 0 and r["final_loss_finite"]


def test_surgery_time(smoke):
    data = smoke["surgery_time"]
    assert data["results"]
    for key, r in data["results"].items():
        for stage in ("analysis", "planning", "surgery", "end_to_end"):
            _timing(r["seconds"][stage], f"{key} {stage}")
        _positive(r["total_seconds"]["wall"])
        _positive(r["total_seconds"]["cpu"])
        assert 0 < r["channels_pruned"] < r["channels_prunable"]
        assert r["flops"][1] < r["flops"][0]


def test_pipeline_overhead(smoke):
    data = smoke["pipeline_overhead"]
    r = data["results"]
    for variant in ("compute", "train", "sparsity"):
        _timing(r["epoch_seconds"][variant], variant)
    _ratios(r["ratio_train"], "train")
    _ratios(r["ratio_sparsity"], "sparsity")
    _timing(r["loader_only_seconds"], "loader")
    for key in ("train", "sparsity"):
        for part in ("ratio", "data_seconds", "setup_seconds", "epoch_end_seconds"):
            _positive(r["in_situ"][key][part], f"{key} {part}")
    _positive(r["bookkeeping_us_per_step"])
    assert r["steps_per_epoch"] >= 1


def test_inference(smoke):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    data = smoke["inference"]
    r = data["results"]
    assert r["availability"]["eager"] == "ok" and r["availability"]["onnxruntime"] == "ok"
    assert len(r["models"]) == 3
    for runtime, per_batch in r["latency_seconds"].items():
        for batch, per_model in per_batch.items():
            for name, s in per_model.items():
                _timing(s, f"{runtime}@{batch} {name}")
    for name, c in r["comparison"].items():
        _positive(c["flop_reduction"], name)
        assert c["flop_reduction"] > 1
        for key, row in c["runtimes"].items():
            for clock in ("wall", "cpu"):
                _positive(row[clock]["speedup"], f"{name} {key}")
                _positive(row[clock]["efficiency"], f"{name} {key}")
    probe = r["memory"]["eager"]
    measured = [m for per_model in probe.values() for m in per_model.values()]
    assert measured and all("error" not in m for m in measured), measured
    for m in measured:
        _positive(m["process_peak_mb"])
        assert math.isfinite(m["inference_peak_mb"]) and math.isfinite(m["load_mb"])


def test_export_speed(smoke):
    r = smoke["export_speed"]["results"]
    assert set(r["pruned"]) == {"50%"} and isinstance(r["never_slower"], bool)
    entry = r["pruned"]["50%"]
    assert entry["flops"] < r["original_flops"]
    for batch, row in entry["speedup"].items():
        assert set(row) == {"deploy_eager", "torch_export"}
        for name, ratio in row.items():
            _positive(ratio, f"{name}@{batch}")
            _timing(entry["latency"][batch][name], f"{name}@{batch}")
    assert entry["slowest"]["speedup"] == min(v for row in entry["speedup"].values() for v in row.values())
    assert r["never_slower"] == (entry["slowest"]["speedup"] >= 1)


def test_jpeg_stream(smoke):
    pytest.importorskip("PIL")
    r = smoke["jpeg_stream"]["results"]
    assert r["images"] == 16 and r["mean_kb"] > 10
    for key in ("reference_full_decode", "netslim_draft_decode", "eval_reference_full_decode",
                "eval_netslim_draft_decode"):
        _positive(r["per_image"][key]["images_per_second"], key)
    _positive(r["loader"]["workers_1"]["images_per_second"])
    for key in ("epoch_over_compute", "epoch_over_sum"):
        _positive(r["overlap"][key], key)
    assert r["overlap"]["epoch_over_sum"] <= r["overlap"]["epoch_over_compute"]


def test_render_markdown(smoke, tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    text = smoke["_render"].render(smoke["_out"], doc, modes=("smoke",), others=False)
    assert doc.read_text() == text
    for name in NAMES:
        if name in smoke:
            assert f"python benchmarks/{name}.py --quick --smoke --threads 1" in text
    assert "torch.set_num_threads(1)" in text and "Date:" in text
    assert text.count("No result yet") == sum(name not in smoke for name in NAMES)


def test_latency(smoke):
    data = smoke["latency"]
    model, on_gpu = data["results"]["models"]
    row = model["rows"][0]
    assert model["target"] == "cpu" and on_gpu["target"] == "gpu"
    assert ("rows" in on_gpu) == torch.cuda.is_available()  # GPU rows, or unmeasured with the reason
    assert torch.cuda.is_available() or "no CUDA" in on_gpu["skipped"]
    assert model["table_build_s"] > 0 and model["original_ms"] > 0
    assert row["measured_speedup"] > 0 and 0 < row["gamma_kept"] <= 1 and 0 < row["flops_fraction"] <= 1


def test_latency_under_load_starts_a_busy_process_and_ends_it(tmp_path, monkeypatch):
    """benchmarks/latency_under_load.py (run on its own, minutes long): its smoke mode plans beside a busy loop,
    judges the compact model, renders, and leaves no busy process behind."""
    import subprocess

    import netslim.timing

    monkeypatch.setattr(netslim.timing, "END_TO_END", 0.05)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("latency_under_load")
    started = []
    real = subprocess.Popen
    monkeypatch.setattr(bench.subprocess, "Popen", lambda *a, **k: started.append(real(*a, **k)) or started[-1])
    threads = torch.get_num_threads()
    try:
        rec = bench.main(["--smoke", "--threads", "1", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    busy = [p for p in started if "while True" in " ".join(map(str, p.args))]
    assert len(busy) == 1 and busy[0].poll() is not None  # the busy loop ran, and was ended
    for name in ("fresh tables", "cached tables"):
        row = rec["results"][name]
        assert row["exit"] == 0 and row["judged_speedup"] > 0 and row["rounds"], row
    assert "Latency planner on a busy machine" in bench.markdown(rec)
    assert (tmp_path / "latency_under_load_smoke.json").exists()

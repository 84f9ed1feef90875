"""benchmarks/gpu.py keeps working without a GPU: --smoke runs every code path on the CPU with tiny sizes
(numbers meaningless) and writes the full JSON structure; the default mode without CUDA records that nothing
was measured and exits cleanly."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu():
    """benchmarks/gpu.py imported from its path; sys.path, the modules it imported and the thread count restored."""
    path, modules, threads = list(sys.path), set(sys.modules), torch.get_num_threads()
    spec = importlib.util.spec_from_file_location("netslim_gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            if str(SCRIPT.parent) in str(getattr(sys.modules[name], "__file__", "") or ""):
                del sys.modules[name]
        torch.set_num_threads(threads)


def _positive(summary: dict) -> None:
    assert summary["n"] >= 1 and 0 < summary["min"] <= summary["median"] and math.isfinite(summary["median"])


@pytest.mark.slow
def test_smoke_runs_every_part(gpu, tmp_path, capsys):
    rec = gpu.main(["--smoke", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert data["benchmark"] == "gpu" and data["mode"] == "smoke" and data["measured"] is True
    assert data["command"] == "python benchmarks/gpu.py --smoke" and data["machine"]["torchvision"]
    r = data["results"]
    assert set(r) == {"reference_data", "reference_epoch", "model_step", "regularizer", "loader", "train_epoch",
                      "stage", "loss_curves", "compact", "jpeg"}
    _positive(r["reference_epoch"]["epoch_seconds"])
    assert r["stage"]["epochs"] == 3 and r["stage"]["projected_160_epochs_seconds"] > 0
    _positive(r["stage"]["seconds_between_epochs"])
    curves = r["loss_curves"]
    assert set(curves["curves"]) == {"cpu_fp32_eager", "cpu_fp32_eager_other_order", "cpu_bf16_eager"}
    assert all(len(c) == 3 for c in curves["curves"].values()) and curves["noise"] > 0
    assert set(curves["within_noise"]) == {"cpu_bf16_eager"}
    d = r["compact"]["default_export"]
    assert d["target"] == "cpu" and [row["batch"] for row in d["rows"]] == [1, 8]
    assert d["slowest"] == min(v for row in d["rows"] for v in row["speedup"].values())
    j = r["jpeg"]
    assert j["images"] == 8 and j["training"]["images_per_second"] > 0
    assert all(ratio > 0 for ratio in j["decode_over_training"].values()) and j["decode_over_training"]
    for workers in gpu.SETTINGS["smoke"]["workers"]:  # torchvision or, without it, the stand-in transform
        _positive(r["reference_data"][f"workers_{workers}"]["epoch_seconds"])
    for key in ("eager_fp32", "eager_bf16_channels_last", "train_loop_eager"):
        _positive(r["model_step"][key])
    assert r["regularizer"]["bn_layers"] == 8 and set(r["regularizer"]["per_call_us"]) == {"foreach", "loop"}
    _positive(r["loader"]["epoch_seconds"])
    assert r["loader"]["batches"] == 256 // 8
    e = r["train_epoch"]["eager"]
    _positive(e["epoch_seconds"])
    assert e["steps"] == 32 and e["epoch_over_step_compute"] > 0
    c = r["compact"]
    assert set(c["models"]) == {"original", "pruned", "pruned_round8"} and c["bn_folded"] is True
    assert "seeded generator" in c["bn_scales"]
    assert all(w % 8 == 0 for w in c["models"]["pruned_round8"]["widths"])
    assert c["models"]["pruned"]["flop_ratio"] > c["models"]["pruned_round8"]["flop_ratio"] > 1
    cases = {(row["dtype"], row["batch"], row["runtime"]) for row in c["rows"]}
    assert cases == {("fp32", 1, "eager"), ("fp32", 1, "compile"), ("fp32", 8, "eager"), ("bf16", 1, "eager"),
                     ("bf16", 8, "eager")}
    for row in c["rows"]:
        assert row["speedup"]["original"] == 1 and set(row["flop_ratio"]) == set(c["models"])
        for s in row["seconds"].values():
            _positive(s)
    assert rec["results"]["compact"]["rows"][0]["dtype"] == "fp32"
    out = capsys.readouterr().out
    assert "(f) Compact VGG" in out and "| fp32 | 1 | compile |" in out and "(g) Loss curves" in out
    assert "Default export for cpu" in out and "(h) 8 ImageNet-size JPEGs" in out


def test_default_mode_without_cuda_writes_unmeasured(gpu, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rec = gpu.main(["--out", str(tmp_path)])
    assert capsys.readouterr().out.startswith("no CUDA device: GPU figures unmeasured")
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["measured"] is False and data["reason"] == gpu.UNMEASURED and data == rec
    measured = {"benchmark": "gpu", "measured": True, "results": {}}  # a real GPU result is never overwritten
    (tmp_path / "gpu.json").write_text(json.dumps(measured))
    gpu.main(["--out", str(tmp_path)])
    assert json.loads((tmp_path / "gpu.json").read_text()) == measured
    gpu.main(["--quick", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "gpu_quick.json").read_text())["measured"] is False
    text = gpu.markdown(data)
    assert text.startswith("**no CUDA device") and "| (e) full train() epoch, graph | unmeasured | unmeasured |" in text
    assert "| bf16 | 1024 | compile | unmeasured |" in text and "Status: unmeasured" in text

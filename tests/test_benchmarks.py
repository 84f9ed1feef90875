"""Smoke tests of the benchmark scripts: each runs its --smoke mode (tiny models, 1-2 repeats) and
must write a JSON result with the expected keys and positive finite numbers. No timing goal is
asserted here: these only keep the scripts from rotting."""

import importlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
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
        data["_render"] = importlib.import_module("render")
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
    """Every benchmark's smoke record renders: its section (status line, body, provenance) and its summary row."""
    render = smoke["_render"]
    doc = tmp_path / "BENCHMARKS.md"
    sections = [s for s in render.SECTIONS if s.name in NAMES]
    text = render.render(smoke["_out"], doc, modes=("smoke",), sections=sections)
    assert doc.read_text() == text
    for section in sections:
        if section.name in smoke:
            assert f"python benchmarks/{section.name}.py --quick --smoke --threads 1" in text
            assert f"## {section.title}" in text
    assert "torch.set_num_threads(1)" in text and "Date:" in text
    assert "failed:" not in text, [line for line in text.splitlines() if "failed:" in line]
    assert text.count("No record yet") == sum(name not in smoke for name in NAMES)
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert summary.count("\n| ") == 1 + len(NAMES)  # the header, then one row per benchmark


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
    assert "| fresh tables | 0 |" in bench.markdown(rec)
    assert "judged" in bench.goals(rec)[0].figure
    assert (tmp_path / "latency_under_load_smoke.json").exists()


# -- the renderer: freshness of each section against the code it measures --

def _git(root: Path, *args: str, when: str = "2026-01-01T12:00:00+00:00") -> str:
    env = {**os.environ, "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when, "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def measured_repo(tmp_path, monkeypatch):
    """A git repository with the code a fake benchmark measures (src/measured.py) and code it does not
    (src/other.py), first committed on 2026-01-01; the benchmark's script (on the import path) and a results
    folder. Returns (repository, first commit, results folder, the section)."""
    if shutil.which("git") is None:
        pytest.skip("needs git")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    render = importlib.import_module("render")
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "src" / "measured.py").write_text("x = 1\n")
    (root / "src" / "other.py").write_text("y = 1\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "first")
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "fake_bench.py").write_text(
        "from common import Goal\n\n\ndef markdown(rec):\n    return f\"took {rec['results']['seconds']} s\\n\"\n\n\n"
        "def goals(rec):\n    return [Goal('fast', 'a fake', f\"{rec['results']['seconds']} s\")]\n")
    monkeypatch.syspath_prepend(str(scripts))
    monkeypatch.delitem(sys.modules, "fake_bench", raising=False)
    results = tmp_path / "results"
    results.mkdir()
    section = render.Section("Fake timing", "fake_bench", ("fake_{mode}.json",), ("src/measured.py",))
    return root, _git(root, "rev-parse", "--short", "HEAD"), results, section


def _record(results: Path, commit: str | None, date: str) -> None:
    machine = {"cpu": "cpu", "platform": "linux", "torch": "2", "date": date, "commit": commit}
    (results / "fake_full.json").write_text(json.dumps(
        {"benchmark": "fake", "mode": "full", "command": "python benchmarks/fake_bench.py", "machine": machine,
         "torch_set_num_threads": 1, "results": {"seconds": 0.25}, "notes": [], "wall_seconds": 1.0}))


def _stale(text: str) -> bool:
    """A section or a summary row says STALE (the method text above the sections names the word too)."""
    return "— STALE" in text or "**STALE" in text


def _render(measured_repo) -> str:
    root, _, results, section = measured_repo
    render = importlib.import_module("render")
    return render.render(results, None, sections=[section], root=root)


def test_a_record_older_than_the_code_it_measures_renders_stale(measured_repo):
    root, first, results, _ = measured_repo
    _record(results, first, "2026-01-01 12:30")
    text = _render(measured_repo)
    assert "## Fake timing\n" in text and not _stale(text) and f"Measured at commit {first}" in text
    assert "| fast | a fake | 0.25 s |" in text and "| fresh |" in text and "took 0.25 s" in text

    (root / "src" / "other.py").write_text("y = 2\n")  # code the section does not measure
    _git(root, "commit", "-q", "-am", "other", when="2026-01-02T12:00:00+00:00")
    assert not _stale(_render(measured_repo))

    (root / "src" / "measured.py").write_text("x = 2\n")
    _git(root, "commit", "-q", "-am", "measured", when="2026-01-03T12:00:00+00:00")
    text = _render(measured_repo)
    assert "## Fake timing — STALE\n\n> **STALE: code changed since: src/measured.py.**" in text
    assert "| **STALE** (1 file) |" in text and "took 0.25 s" in text


def test_a_record_without_a_commit_is_judged_by_its_date(measured_repo):
    root, _, results, _ = measured_repo
    (root / "src" / "measured.py").write_text("x = 2\n")
    _git(root, "commit", "-q", "-am", "measured", when="2026-01-05T12:00:00+00:00")
    _record(results, None, "2026-01-03 12:00")  # between the two commits
    text = _render(measured_repo)
    assert "— STALE" in text and "code changed since: src/measured.py" in text
    assert "Measured on 2026-01-03 12:00 (commit not recorded)" in text and "| not recorded, 2026-01-03 |" in text
    _record(results, None, "2026-01-07")  # after both: a day without a time counts from its start
    assert not _stale(_render(measured_repo))


def test_freshness_unknown_without_git_or_with_a_commit_git_does_not_know(measured_repo, monkeypatch, tmp_path):
    _, first, results, _ = measured_repo
    _record(results, "0123abc", "2026-01-01 12:30")
    text = _render(measured_repo)
    assert "Freshness unknown: `git diff` failed" in text and not _stale(text)
    _record(results, first, "2026-01-01 12:30")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    text = _render(measured_repo)
    assert "Freshness unknown: git is not available here." in text and "| unknown: git is not available here |" in text


def test_every_section_names_code_and_commands_that_exist():
    """A declared path that does not exist would never look changed: the section would stay fresh forever."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        render = importlib.import_module("render")
    finally:
        sys.path.remove(str(BENCHMARKS))
    root = BENCHMARKS.parent
    for section in render.SECTIONS:
        assert section.paths and (BENCHMARKS / f"{section.script}.py").exists(), section.name
        missing = [p for p in section.paths if not (root / p).exists()]
        assert not missing, f"{section.name} measures {missing}, which do not exist"
        for line in section.run:
            assert (root / line.split()[0]).exists(), line

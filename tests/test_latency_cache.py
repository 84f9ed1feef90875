"""The latency cache is data, not truth: a corrupt file is rebuilt with one line naming it; timings whose runs
disagree, or tables that disagree with the whole model measured now, are not kept; a refresh flag; and the
planner's arguments are checked before any table is measured.

Layer timings here follow a law (t = in·out·1e-6 s) and the whole model takes 1.2x its layers, so that what
is tested is what the cache keeps and says, not how steady this machine is."""

import json
import math
import warnings

import pytest
import torch

import netslim.latency as latency
from netslim import models
from netslim.graph import trace_channels
from netslim.latency import measure_table, plan_for_latency

from .conftest import randomize_bn

X = torch.zeros(1, 3, 32, 32)


def _model():
    return randomize_bn(models.create("vgg11", widths=[16, 32, 48, 48, 64, 64, 64, 64])).eval()


def _law(pairs, scale=1.0):
    return {(i, o): scale * 1e-6 * i * o for i, o in pairs}


@pytest.fixture
def lawful(monkeypatch):
    """Layer tables by the law (times ``state["scale"]``, runs agreeing unless ``state["steady"]`` is False);
    the whole model 1.2x its layers at full width. Returns the state, with the layers timed so far."""
    import netslim.timing

    state = {"scale": 1.0, "steady": True, "timed": []}

    def time_layer(layer, kind, shape, deployed_as, full_in, full_out, repeats, backend="eager"):
        state["timed"].append((full_in, full_out))
        return _law(latency.probe_pairs(kind, full_in, full_out), state["scale"]), state["steady"]

    def whole(model, x, backend="eager", repeats=20):
        layers = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
        return 1.2 * sum(1e-6 * m.weight.shape[0] * m.weight.shape[1] for m in layers)

    monkeypatch.setattr(latency, "_time_layer", time_layer)
    monkeypatch.setattr(latency, "deployed_latency", whole)
    monkeypatch.setattr(netslim.timing, "END_TO_END", 0.05)  # the CLI's closing check: timed, briefly
    return state


def _cache(folder):
    files = list(folder.glob("*.json"))
    assert len(files) == 1, files
    return files[0]


def _quiet(call):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in seen]


def _corrupt(text):
    data = json.loads(text)
    key = next(iter(data))
    pair = next(iter(data[key]))
    nested = "[" * 100_000 + "]" * 100_000
    return {
        "null": "null",
        "a list": "[]",
        "truncated": text[: len(text) // 2],
        "nested": nested,
        "nested inside": json.dumps({key: {}})[:-2] + ": " + nested + "}",
        "NaN": json.dumps({**data, key: {**data[key], pair: float("nan")}}),
        "negative": json.dumps({**data, key: {**data[key], pair: -1e-3}}),
        "a huge time": json.dumps({**data, key: {**data[key], pair: 10 ** 400}}),
        "a string time": json.dumps({**data, key: {**data[key], pair: "fast"}}),
        "three widths": json.dumps({**data, key: {"16,32,5": 1e-3, **data[key]}}),
        "one sample per layer": json.dumps({k: {p: v[p]} for k, v in data.items() for p in list(v)[:1]}),
        "zero width": json.dumps({**data, key: {"0,16": 1e-3, **data[key]}}),
    }


def test_a_corrupt_cache_is_rebuilt_with_one_line_naming_the_file(tmp_path, lawful):
    model = _model()
    good = measure_table(model, X, cache_dir=tmp_path)
    file = _cache(tmp_path)
    text = file.read_text()
    for name, corrupt in _corrupt(text).items():
        file.write_text(corrupt)
        lawful["timed"].clear()
        table, said = _quiet(lambda: measure_table(model, X, cache_dir=tmp_path))
        assert len(said) == 1 and str(file) in said[0] and "corrupt" in said[0], (name, said)
        assert table.samples == good.samples and lawful["timed"], name  # measured again, and right
        assert json.loads(file.read_text()) == json.loads(text), name  # rewritten whole
        lawful["timed"].clear()
        _, said = _quiet(lambda: measure_table(model, X, cache_dir=tmp_path))
        assert not said and not lawful["timed"], name  # and read back from then on


def test_timings_whose_runs_disagree_are_used_but_not_cached(tmp_path, lawful):
    lawful["steady"] = False
    table = measure_table(_model(), X, cache_dir=tmp_path)
    assert table.samples and not list(tmp_path.glob("*.json"))
    lawful["steady"] = True
    measure_table(_model(), X, cache_dir=tmp_path)
    assert set(json.loads(_cache(tmp_path).read_text())) == set(table.samples)


def test_runs_agree_when_a_stall_is_the_exception_not_the_rule(monkeypatch):
    """A 0.5 ms layer whose threads are descheduled for 16 ms slices most of the time (a 2-core machine shared
    with other jobs): the runs disagree, the fastest is kept, and it is said. Microsecond runs that spread
    by 1.7x (the timer) agree."""
    import netslim.timing as timing

    def clock(durations):
        now, ticks, calls = [0.0], iter(durations), [0]

        def perf_counter():  # called twice per run: at its start, and at its end (a run later)
            calls[0] += 1
            if calls[0] % 2 == 0:
                now[0] += next(ticks)
            return now[0]

        monkeypatch.setattr(timing.time, "perf_counter", perf_counter)

    clock([d for _ in range(400) for d in (5e-4, 5e-4, 0.016, 0.016, 0.016, 0.016)])
    fastest, agreed = timing.steady_time(lambda: None, 5, warmup=0)
    assert fastest == pytest.approx(5e-4) and not agreed
    clock([d for _ in range(20000) for d in (1e-5, 1.7e-5, 1.7e-5)])
    assert timing.steady_time(lambda: None, 5, warmup=0)[1]
    clock([1e-3] * 1000)
    assert timing.steady_time(lambda: None, 5, warmup=0) == (pytest.approx(1e-3), True)


def test_cached_tables_that_disagree_with_the_model_measured_now_are_measured_again(tmp_path, lawful):
    """Tables taken on a busy machine predict the layers alone 8x slower than the whole model runs now: they
    are measured again (one line naming the file), and the file holds the new ones."""
    model = _model()
    lawful["scale"] = 8.0
    busy, said = _quiet(lambda: measure_table(model, X, cache_dir=tmp_path))
    assert any("not cached" in s for s in said) and not list(tmp_path.glob("*.json"))  # taken busy: not kept
    lawful["scale"] = 1.0
    good = measure_table(model, X, cache_dir=tmp_path)
    file = _cache(tmp_path)
    file.write_text(json.dumps({k: {p: 8 * t for p, t in v.items()} for k, v in json.loads(file.read_text()).items()}))
    lawful["timed"].clear()
    table, said = _quiet(lambda: measure_table(model, X, cache_dir=tmp_path))
    assert len(said) == 1 and str(file) in said[0] and "measured again" in said[0], said
    assert lawful["timed"] and table.samples == good.samples
    assert latency.predict(table, trace_channels(model), set()) == pytest.approx(table.measured)
    assert json.loads(file.read_text()) == {k: {f"{i},{o}": t for (i, o), t in v.items()} for k, v in
                                            good.samples.items()}


def test_a_refresh_measures_every_table_again(tmp_path, lawful, capsys, monkeypatch):
    model = _model()
    measure_table(model, X, cache_dir=tmp_path)
    lawful["timed"].clear()
    measure_table(model, X, cache_dir=tmp_path)
    assert not lawful["timed"]
    lawful["scale"] = 1.1  # what the machine measures now: kept
    table = measure_table(model, X, cache_dir=tmp_path, refresh=True)
    assert len(lawful["timed"]) == len(table.samples)
    stored = json.loads(_cache(tmp_path).read_text())
    assert all(math.isclose(stored[k][f"{i},{o}"], t) for k, v in table.samples.items() for (i, o), t in v.items())

    from netslim.cli import main

    monkeypatch.setenv("NETSLIM_CACHE", str(tmp_path / "cli"))
    monkeypatch.setattr(latency, "deployed_latencies", lambda models, x, backend="eager", repeats=20:
                        [1.0] + [0.5] * (len(models) - 1))
    assert main(["prune", "mlp", "--target-speedup", "1.5", "--out", str(tmp_path / "a.pt")]) == 0
    lawful["timed"].clear()
    assert main(["prune", "mlp", "--target-speedup", "1.5", "--out", str(tmp_path / "b.pt")]) == 0
    assert not lawful["timed"]
    assert main(["prune", "mlp", "--target-speedup", "1.5", "--refresh-latency-tables", "--out",
                 str(tmp_path / "c.pt")]) == 0
    assert lawful["timed"]


def test_the_cli_names_a_corrupt_cache_in_one_warning_line(tmp_path, lawful, capsys, monkeypatch):
    from netslim.cli import main

    monkeypatch.setenv("NETSLIM_CACHE", str(tmp_path))
    monkeypatch.setattr(latency, "deployed_latencies", lambda models, x, backend="eager", repeats=20:
                        [1.0] + [0.5] * (len(models) - 1))
    assert main(["prune", "mlp", "--target-speedup", "1.5", "--out", str(tmp_path / "a.pt")]) == 0
    file = _cache(tmp_path / "latency")
    file.write_text("null")
    capsys.readouterr()
    assert main(["prune", "mlp", "--target-speedup", "1.5", "--out", str(tmp_path / "b.pt")]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netslim: warning:") and str(file) in lines[0], lines


@pytest.mark.parametrize("bad", [
    dict(target_speedup=0.5), dict(target_speedup="2"), dict(target_speedup=math.nan), dict(target_speedup=True),
    dict(target_latency=-1.0), dict(target_latency=math.inf), dict(target_speedup=2.0, target_latency=1.0), {},
    dict(target_speedup=2.0, measured_rounds=-3), dict(target_speedup=2.0, measured_rounds=1.5),
    dict(target_speedup=2.0, tolerance=0.0), dict(target_speedup=2.0, cost_exponents=()),
    dict(target_speedup=2.0, cost_exponents=(math.nan,)), dict(target_speedup=2.0, round_to=(0,)),
    dict(target_speedup=2.0, round_to=()), dict(target_speedup=2.0, example_input=None)])
def test_the_planners_arguments_are_checked_before_any_table_is_measured(monkeypatch, bad):
    def measured(*args, **kwargs):
        raise AssertionError("a table was measured before the arguments were checked")

    monkeypatch.setattr(latency, "measure_table", measured)
    with pytest.raises(ValueError) as e:
        plan_for_latency(_model(), **{"example_input": X, **bad})
    assert "\n" not in str(e.value)

import pytest
import torch

from netslim import models
from netslim.data import Dataset, Loader
from netslim.train import TrainConfig, TrainingDiverged, evaluate, train


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = (torch.rand(n, 1, 4, 4, generator=g) * 100 + labels[:, None, None, None] * 50).to(torch.uint8)
    return Dataset(images, labels, 3, (0.5,), (0.25,), "toy")


def _model():
    torch.manual_seed(0)  # the same initial weights every time
    return models.create("mlp", widths=[32, 16], input_size=(1, 4, 4), num_classes=3)


def _config(**kw):
    base = dict(epochs=4, batch_size=32, lr=0.05, sparsity=1e-3, bn_init=0.5, progress=False, seed=1)
    return TrainConfig(**{**base, **kw})


def test_training_learns_and_logs(tmp_path):
    data = _data()
    model = _model()
    result = train(model, Loader(data, 32, seed=1), _config(), test_loader=Loader(data, 64, train=False),
                   out_dir=tmp_path)
    assert result["final"]["test_accuracy"] > 0.8
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    assert {"train_loss", "lr", "gamma_below_1e-2", "safe_percent"} <= set(eval(lines[0].replace("NaN", "0")))
    assert (tmp_path / "last.pt").exists() and (tmp_path / "best.pt").exists()


def test_learning_rate_schedule_is_the_papers():
    data = _data(64)
    result = train(_model(), Loader(data, 32), _config(epochs=8, sparsity=0.0))
    lrs = [r["lr"] for r in result["history"]]
    assert lrs == pytest.approx([0.05] * 4 + [0.005] * 2 + [0.0005] * 2)


@pytest.mark.parametrize("sparsity", [1e-3, "auto"])  # auto: the λ controller's state resumes too
def test_interrupted_and_resumed_run_ends_with_identical_weights(tmp_path, sparsity):
    data = _data()
    straight = _model()
    first = train(straight, Loader(data, 32, train=True, seed=1), _config(sparsity=sparsity), out_dir=tmp_path / "a")

    class Stop(Exception):
        pass

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise Stop

    interrupted = _model()
    with pytest.raises(Stop):
        train(interrupted, Loader(data, 32, seed=1), _config(sparsity=sparsity), out_dir=tmp_path / "b",
              on_epoch=stop_after_two)
    resumed = _model()
    result = train(resumed, Loader(data, 32, seed=1), _config(sparsity=sparsity), out_dir=tmp_path / "b")
    assert len(result["history"]) == 4
    assert [r["sparsity"] for r in result["history"]] == [r["sparsity"] for r in first["history"]]
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    data = _data()
    model = _model()
    train(model, Loader(data, 32), _config(epochs=1), out_dir=tmp_path)
    before = (tmp_path / "last.pt").read_bytes()
    with torch.no_grad():
        model.classifier.weight.fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        train(model, Loader(data, 32), _config(epochs=1), out_dir=tmp_path, resume=False)
    assert (tmp_path / "last.pt").read_bytes() == before


def test_sparsity_training_shrinks_scales_compared_to_plain_training():
    data = _data()
    plain, sparse = _model(), _model()
    train(plain, Loader(data, 32), _config(sparsity=0.0, epochs=6))
    train(sparse, Loader(data, 32), _config(sparsity=0.2, epochs=6))
    assert sparse.hidden[1].weight.abs().mean() < 0.5 * plain.hidden[1].weight.abs().mean()


@pytest.mark.parametrize("kw, message", [(dict(epochs=0), "epochs"), (dict(lr=0), "lr"),
                                         (dict(sparsity=-1), "sparsity"), (dict(batch_size=0), "batch_size")])
def test_bad_training_options(kw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kw)


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        train(_model(), Loader(_data(32), 32), _config(device="cuda"))


def test_evaluate_counts_accuracy():
    data = _data(64)
    model = _model()
    acc = evaluate(model, Loader(data, 10, train=False))["accuracy"]
    with torch.no_grad():
        from netslim.data import normalize
        expected = (model.eval()(normalize(data.images, data.mean, data.std)).argmax(1) == data.labels).float().mean()
    assert acc == pytest.approx(expected.item())


def test_fp16_with_gradscaler_still_applies_sparsity():
    data = _data()
    plain, scaled = _model(), _model()
    train(plain, Loader(data, 32), _config(sparsity=0.0, epochs=4))
    train(scaled, Loader(data, 32), _config(sparsity=0.2, epochs=4, amp="fp16"))  # autocast fp16 + GradScaler on CPU
    assert scaled.hidden[1].weight.abs().mean() < 0.5 * plain.hidden[1].weight.abs().mean()


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    import netslim.train as train_module

    def broken_compile(net, device, graphed):
        def fail(*a, **k):
            raise RuntimeError("graph capture impossible")
        return fail

    monkeypatch.setattr(train_module, "_compiled", broken_compile)
    with pytest.warns(UserWarning, match="eager mode"):
        result = train(_model(), Loader(_data(64), 32), _config(epochs=1, compile=True))
    assert result["final"]["train_loss"] > 0


def test_compiled_training_matches_eager():
    pytest.importorskip("torch._inductor")
    data = _data(64)
    eager, compiled = _model(), _model()
    a = train(eager, Loader(data, 32), _config(epochs=1, sparsity=0.0))
    b = train(compiled, Loader(data, 32), _config(epochs=1, sparsity=0.0, compile=True))
    assert b["final"]["train_loss"] == pytest.approx(a["final"]["train_loss"], rel=1e-3)


def test_bad_amp_setting():
    with pytest.raises(ValueError, match="amp must be"):
        TrainConfig(amp="fp8")


def test_bf16_on_a_gpu_without_bf16_is_a_clear_error_and_auto_falls_back_to_fp16(monkeypatch):
    from netslim.train import autocast_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    cuda = torch.device("cuda")
    with pytest.raises(ValueError, match="no bf16 support; use --amp fp16"):
        autocast_dtype("bf16", cuda)
    assert autocast_dtype("auto", cuda) == torch.float16  # then with a GradScaler (see train())
    assert autocast_dtype("auto", torch.device("cpu")) is None and autocast_dtype("off", cuda) is None


def test_the_progress_bar_moves_with_its_figures(capsys, monkeypatch):
    """The progress bar's count moves with its loss/acc figures (it used to stay at 0%)."""
    monkeypatch.setattr("netslim.train._on_terminal", lambda: True)  # the bar is drawn on a terminal only
    train(_model(), Loader(_data(1024), 8, seed=1), _config(epochs=1, progress=True))
    frames = [f for f in capsys.readouterr().err.split("\r") if "loss=" in f]
    assert len(frames) >= 3
    assert all(" 0%|" not in f for f in frames), frames[:3]
    assert "/128" in frames[-1]  # out of the loader's batches


def test_the_training_module_is_reachable_from_the_package():
    """The README's own-loop snippet calls netslim.train.recalibrate_bn after a plain `import netslim`."""
    import subprocess
    import sys

    code = "import netslim; print(netslim.train.recalibrate_bn.__name__)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == \
        "recalibrate_bn"

"""A training folder resumes only what was trained: changed options are refused,
more epochs extend, a diverged run resumes from its last good epoch with a lower lr, nothing exploded is
saved, the folder is locked, metrics.jsonl never lags last.pt and orphaned temporaries go."""

import fcntl
import json

import pytest
import torch

from netslim import models, runstate
from netslim.data import Dataset, Loader
from netslim.runfolder import LOCK_NAME, FolderBusy, locked
from netslim.train import TrainConfig, TrainingDiverged, train


def _data(n=128):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = (torch.rand(n, 1, 4, 4, generator=g) * 100 + labels[:, None, None, None] * 50).to(torch.uint8)
    return Dataset(images, labels, 3, (0.5,), (0.25,), "toy")


def _model():
    torch.manual_seed(0)
    return models.create("mlp", widths=[16, 8], input_size=(1, 4, 4), num_classes=3)


def _config(**kw):
    return TrainConfig(**{**dict(epochs=2, batch_size=32, lr=0.05, sparsity=1e-3, bn_init=0.5, progress=False,
                                 seed=1), **kw})


def _train(out, log=None, **kw):
    return train(_model(), Loader(_data(), 32, seed=1), _config(**kw), out_dir=out, log=log)


def test_resume_refuses_changed_options_naming_them_and_how_to_start_fresh(tmp_path):
    _train(tmp_path)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=r"lr 0.05 \(now 0.001\), sparsity 0.001 \(now 0.01\).*--no-resume"):
        _train(tmp_path, epochs=4, lr=0.001, sparsity=0.01)
    assert (tmp_path / "last.pt").read_bytes() == before
    with pytest.raises(ValueError, match=r"epochs 2 \(now 1\)"):  # fewer epochs: the schedule was made for 2
        _train(tmp_path, epochs=1)


def test_resume_and_extension_are_announced_and_extension_keeps_the_schedule(tmp_path):
    said = []
    _train(tmp_path, log=said.append)
    assert said == []  # a fresh run says nothing
    result = _train(tmp_path, log=said.append, epochs=4, progress=True)  # how it runs may change
    assert [line for line in said if not line.startswith("epoch ")] == [
        f"extending {tmp_path} from 2 to 4 epochs: resuming after epoch 2, the learning rate schedule of the "
        "2-epoch run kept"]
    assert [line.split(",")[0] for line in said if line.startswith("epoch ")] == ["epoch 3", "epoch 4"]  # no tty
    assert [r["epoch"] for r in result["history"]] == [1, 2, 3, 4]
    assert [r["lr"] for r in result["history"]][2:] == pytest.approx([0.0005, 0.0005])  # where the 2-epoch run ended
    said.clear()
    _train(tmp_path, log=said.append, epochs=4)
    assert said == [f"{tmp_path} already holds all 4 epochs: nothing to train (--no-resume starts over)"]


def test_divergence_in_the_first_epoch_says_that_no_checkpoint_was_written(tmp_path):
    model = _model()
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="epoch 1; no epoch finished, so no checkpoint was written"):
        train(model, Loader(_data(), 32), _config(), out_dir=tmp_path)
    assert not (tmp_path / "last.pt").exists()


def test_exploded_weights_are_never_saved_as_a_good_epoch(tmp_path):
    model = _model()
    with torch.no_grad():
        model.classifier.weight.mul_(1e12)  # a finite loss, weights no trained network has
    with pytest.raises(TrainingDiverged, match=r"weights exploded in epoch 1 \(largest \|w\| = "):
        train(model, Loader(_data(), 32), _config(lr=1e-6), out_dir=tmp_path)
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()


def test_a_diverged_run_resumes_from_its_last_good_epoch_only_with_a_lower_lr(tmp_path):
    def blow_up(record):  # after epoch 2 was saved: epoch 3 diverges
        if record["epoch"] == 2:
            with torch.no_grad():
                model.classifier.weight.fill_(float("inf"))

    model = _model()
    with pytest.raises(TrainingDiverged, match=r"epoch 3; the last good checkpoint \(epoch 2\) is kept") as e:
        train(model, Loader(_data(), 32, seed=1), _config(epochs=4), out_dir=tmp_path, on_epoch=blow_up)
    assert "--lr" in str(e.value) and torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 2
    with pytest.raises(ValueError, match="same options would diverge again"):
        _train(tmp_path, epochs=4)
    with pytest.raises(ValueError, match="not a new seed"):
        _train(tmp_path, epochs=4, lr=0.01, seed=5)
    said = []
    result = _train(tmp_path, log=said.append, epochs=4, lr=0.01)
    assert said == [f"{tmp_path} diverged in epoch 3: resuming from epoch 2 with lr 0.01 (was 0.05)"]
    lrs = [r["lr"] for r in result["history"]]
    assert lrs[:2] == pytest.approx([0.05, 0.05]) and lrs[2:] == pytest.approx([0.001, 0.0001])  # new lr, same schedule
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["config"]["lr"] == 0.01 and saved["epoch"] == 4 and not (tmp_path / runstate.DIVERGED).exists()


def test_metrics_never_lag_last_pt_and_a_resume_rewrites_them_from_it(tmp_path, monkeypatch):
    real = runstate.save_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(path, payload):  # killed right after last.pt of epoch 2 is in place
        real(path, payload)
        if path.name == "last.pt" and payload["epoch"] == 2:
            raise Killed

    monkeypatch.setattr(runstate, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        _train(tmp_path, epochs=3)
    monkeypatch.setattr(runstate, "save_checkpoint", real)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n')  # ahead, or garbled
    _train(tmp_path, epochs=3)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3] and all("train_loss" in r for r in lines)


def test_orphaned_temporary_files_are_removed_by_the_next_run(tmp_path):
    _train(tmp_path, epochs=1)
    orphans = [tmp_path / ".last.pt.k2j3h4.tmp", tmp_path / ".best.pt.x9.tmp", tmp_path / ".metrics.jsonl.a.tmp"]
    for p in orphans:
        p.write_bytes(b"partial")
    keep = tmp_path / ".notes.tmp"
    keep.write_text("not ours")
    _train(tmp_path, epochs=2)
    assert not any(p.exists() for p in orphans) and keep.exists()


def test_a_folder_in_use_by_another_process_is_one_error_and_released_after(tmp_path):
    with open(tmp_path / LOCK_NAME, "a") as other:  # another process's lock: its own open file
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(FolderBusy, match="in use by another netslim process"):
            _train(tmp_path, epochs=1)
        assert not (tmp_path / "last.pt").exists()
        fcntl.flock(other, fcntl.LOCK_UN)
    _train(tmp_path, epochs=1)
    with open(tmp_path / LOCK_NAME, "a") as other:  # the run let go of it
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with locked(tmp_path), locked(tmp_path):  # re-entrant inside one process (the CLI, then train())
        _train(tmp_path, epochs=1)

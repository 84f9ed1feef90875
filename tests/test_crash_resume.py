"""Kill a training process with SIGKILL at random moments, resume it, and get the same weights."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("sklearn")  # the embedded digits dataset

ARGS = ["-m", "netslim.cli", "train", "--model", "mlp", "--dataset", "digits", "--sparsity", "1e-2", "--bn-init",
        "0.5", "--epochs", "60", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _epochs_done(out) -> int:
    log = out / "metrics.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _train(out, kill_at=None, jitter=0.0):
    """Run training; with ``kill_at``, SIGKILL it once it has finished that many epochs (plus ``jitter`` s)."""
    proc = subprocess.Popen([sys.executable, *ARGS, "--out", str(out)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if kill_at is None:
        assert proc.wait(timeout=300) == 0
        return
    deadline = time.monotonic() + 240
    while _epochs_done(out) < kill_at and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(jitter)  # anywhere in the next epoch: mid-step, mid-evaluation or mid-checkpoint-write
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def test_sigkill_at_random_points_then_resume_gives_bitwise_identical_weights(tmp_path):
    rng = random.Random(1234)
    _train(tmp_path / "straight")
    resumed_from = []
    for target in sorted(rng.sample(range(5, 55), 3)):
        _train(tmp_path / "killed", kill_at=target, jitter=rng.uniform(0.0, 0.05))
        # Whatever moment the kill hit, the folder holds a complete checkpoint, never a partial one.
        resumed_from.append(torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["epoch"])
    _train(tmp_path / "killed")
    assert any(0 < e < 60 for e in resumed_from), resumed_from  # killed mid-run, after a checkpoint
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 60
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    assert all(torch.equal(a["gammas"][k], b["gammas"][k]) for k in a["gammas"])

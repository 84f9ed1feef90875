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
        "0.5", "--epochs", "40", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(out, kill_after=None):
    proc = subprocess.Popen([sys.executable, *ARGS, "--out", str(out)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if kill_after is None:
        assert proc.wait(timeout=300) == 0
        return True
    time.sleep(kill_after)
    finished = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return finished


def test_sigkill_at_random_points_then_resume_gives_bitwise_identical_weights(tmp_path):
    rng = random.Random(1234)
    _train(tmp_path / "straight")
    kills, resumed_from = 0, []
    for _ in range(3):
        if _train(tmp_path / "killed", kill_after=rng.uniform(2.0, 5.0)):
            break
        kills += 1
        # Whatever moment the kill hit, the folder holds a complete checkpoint or none, never a partial one.
        if (tmp_path / "killed" / "last.pt").exists():
            resumed_from.append(torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["epoch"])
    _train(tmp_path / "killed")
    assert kills >= 1 and any(0 < e < 40 for e in resumed_from), resumed_from  # killed mid-run, after a checkpoint
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 40
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    assert all(torch.equal(a["gammas"][k], b["gammas"][k]) for k in a["gammas"])

"""Kill a training process with SIGKILL at random moments, resume it, and get the same weights."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

pytest.importorskip("sklearn")  # the embedded digits dataset

ARGS = ["-m", "netslim.cli", "train", "--model", "mlp", "--dataset", "digits", "--sparsity", "1e-2", "--bn-init",
        "0.5", "--epochs", "60", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # each epoch line reaches us as printed


def _train(out, kill_at=None, jitter=0.0):
    """Run training; with ``kill_at``, SIGKILL it once it has finished that many epochs (plus ``jitter`` s).

    The child signals each finished epoch itself: it prints ``epoch N, ...`` after that epoch's checkpoint
    is written, and we block on its output until that line comes (no polling of the run folder)."""
    proc = subprocess.Popen([sys.executable, *ARGS, "--out", str(out)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    if kill_at is None:
        proc.communicate(timeout=300)
        assert proc.returncode == 0
        return
    watchdog = threading.Timer(240, proc.kill)  # a child that hangs cannot hang the test
    watchdog.start()
    try:
        for line in proc.stdout:
            if line.startswith(f"epoch {kill_at},"):
                break
        time.sleep(jitter)  # anywhere in the next epoch: mid-step, mid-evaluation or mid-checkpoint-write
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        proc.stdout.close()


@pytest.mark.slow
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

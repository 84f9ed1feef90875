import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("dist_worker.py")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_and_keep_scales_identical(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    single.mkdir(), multi.mkdir()
    subprocess.run([sys.executable, str(WORKER), str(single)], check=True, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                    str(WORKER), str(multi)], check=True, timeout=300, capture_output=True)
    alone = torch.load(single / "rank0.pt", weights_only=True)
    rank0 = torch.load(multi / "rank0.pt", weights_only=True)
    rank1 = torch.load(multi / "rank1.pt", weights_only=True)
    for key in alone:
        assert torch.equal(rank0[key], rank1[key]), key  # the same γ (and everything else) on every rank
        if not key.endswith("running_var"):  # Bessel's n/(n-1) differs between 16 duplicated and 8 distinct
            torch.testing.assert_close(rank0[key], alone[key], rtol=1e-4, atol=1e-5)
    gamma = rank0["hidden.1.weight"]
    assert not torch.allclose(gamma, torch.full_like(gamma, 0.5))  # training really happened
    # Only rank 0 wrote the run folder's checkpoint and log.
    assert (multi / "run" / "last.pt").exists() and len((multi / "run" / "metrics.jsonl").read_text().splitlines()) == 3
    # λ chosen for a target: the same on every rank, epoch by epoch, and the same weights
    auto0 = torch.load(multi / "auto-rank0.pt", weights_only=True)
    auto1 = torch.load(multi / "auto-rank1.pt", weights_only=True)
    assert auto0["lambda"] == auto1["lambda"] and len({lam for row in auto0["lambda"] for lam in row}) > 1
    assert all(torch.equal(a, b) for a, b in zip(auto0["weights"].values(), auto1["weights"].values(), strict=True))

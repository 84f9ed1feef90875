"""The environment tools/setup-venv made (`make demo`/`make test`'s .venv, `make zoo`'s .venv-zoo): on a
machine without a GPU, PyTorch's CPU build and no CUDA library, checked by listing its packages."""

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

RECORD = Path(sys.prefix) / "netslim-torch-build.txt"  # written by tools/setup-venv


def _gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _cuda_packages() -> list[str]:
    """PyTorch's CUDA libraries (nvidia-cublas, cuda-toolkit...); not nvidia-ml-py, the pure-Python NVML
    binding that Ultralytics requires on every machine."""
    names = (d.metadata["Name"] or "" for d in metadata.distributions())
    return sorted(n for n in names if n.lower().startswith(("nvidia-", "cuda-")) and n.lower() != "nvidia-ml-py")


def test_a_machine_without_a_gpu_gets_no_cuda_libraries():
    if not RECORD.exists():
        pytest.skip(f"{sys.prefix} was not made by tools/setup-venv (no {RECORD.name})")
    if _gpu():
        pytest.skip("this machine has a GPU: PyTorch's CUDA build is the one wanted")
    record = RECORD.read_text().strip()
    cuda = _cuda_packages()
    if "cpu index reached: no" in record:
        pytest.skip(f"PyTorch's CPU index could not be reached when {sys.prefix} was made, so it has the default "
                    f"builds: {record}")
    assert torch.version.cuda is None, f"{sys.prefix} has PyTorch's CUDA build ({record})"
    assert not cuda, f"{sys.prefix} has CUDA libraries although it was made without a GPU: {', '.join(cuda[:6])}"

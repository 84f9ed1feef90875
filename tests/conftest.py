import os
import tempfile

import pytest
import torch

from netslim.testing import randomize_bn  # noqa: F401  (one definition; tests import it from here too)

# One intra-op thread: the models here are small, and several test processes (torchrun workers, the
# crash test's trainer) share the cores; oversubscribed OpenMP threads slow such runs many-fold.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def run_cli(capsys, *argv):
    """``netslim ARGV`` in this process: (exit code, stdout, stderr)."""
    from netslim.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *argv, message=""):
    """``netslim ARGV`` refused: exit code 2 and one line on stderr, containing ``message``, no traceback."""
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, (argv, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "internal error" not in err, (argv, err)
    assert message in err, (argv, err)
    return err


def on_a_full_disk(monkeypatch):
    """Every temporary file made from now on writes to /dev/full: ENOSPC from the kernel, as on a full disk."""
    real = tempfile.mkstemp

    def mkstemp(**kw):
        fd, path = real(**kw)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, fd)
        os.close(full)
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)

"""What netslim writes: never through a link or over a device, never over a file the user did not name
for replacing, whole or not at all, never into a run folder another process owns, and nothing at all
when a command is refused (on the command line and in Python)."""

import fcntl
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

import netslim
from netslim import models
from netslim.checkpoint import describe, save_checkpoint
from netslim.deployment import export_torchscript
from netslim.runfolder import (
    LOCK_NAME,
    DiskFull,
    FolderBusy,
    OutputRefused,
    clean_stale,
    locked,
    replacing,
    write_atomic,
)

from .conftest import on_a_full_disk, one_line_error, randomize_bn, run_cli

KWARGS = {"widths": [16, 8], "input_size": (1, 8, 8), "num_classes": 3}


@pytest.fixture
def checkpoint(tmp_path):
    model = randomize_bn(models.create("mlp", **KWARGS))
    path = tmp_path / "m.pt"
    save_checkpoint(path, {"arch": describe(model, "mlp", KWARGS), "state_dict": model.state_dict()})
    return path


def _compact():
    return randomize_bn(models.create("mlp", **KWARGS)).eval()


def _not_a_regular_file(folder):
    """A socket file (and, as root, a character device like /dev/null): outputs netslim must refuse."""
    made = []
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "sock"))
    made.append(folder / "sock")
    if os.geteuid() == 0:
        os.mknod(folder / "null", 0o666 | 0o020000, os.makedev(1, 3))  # S_IFCHR: a copy of /dev/null's node
        made.append(folder / "null")
    return sock, made


def test_outputs_are_never_written_through_a_link(checkpoint, tmp_path, capsys):
    """prune's --out, --plan-out and --ultralytics-out, export's files, a plan saved in Python: a link there is
    refused in one line before any work, and its target is left as it was."""
    target = tmp_path / "n.txt"
    target.write_text("precious")
    for name in ("p.json", "k.pt", "y.pt", "m.ts", "m.onnx"):
        (tmp_path / name).symlink_to(target)
    for option, name in (("--plan-out", "p.json"), ("--ultralytics-out", "y.pt")):
        one_line_error(capsys, "prune", checkpoint, "--out", tmp_path / "s.pt", option, tmp_path / name,
                message="is a symbolic link")
    one_line_error(capsys, "prune", checkpoint, "--out", tmp_path / "k.pt", "--overwrite", message="is a symbolic link")
    for option, name in (("--torchscript", "m.ts"), ("--onnx", "m.onnx")):
        one_line_error(capsys, "export", checkpoint, option, tmp_path / name, "--overwrite",
                       message="is a symbolic link")
    assert target.read_text() == "precious" and not (tmp_path / "s.pt").exists()
    plan = netslim.plan_pruning(_compact(), 0.5)
    with pytest.raises(OutputRefused, match="symbolic link"):
        plan.save(tmp_path / "p.json", overwrite=True)
    with pytest.raises(OutputRefused, match="symbolic link"):
        export_torchscript(_compact(), tmp_path / "m.ts", overwrite=True)
    assert target.read_text() == "precious"


def test_the_run_folders_own_files_are_never_written_through_a_link(tmp_path, capsys):
    """run's results.md and report's PNGs (and the report folder itself) as links: refused before any work."""
    target = tmp_path / "n.txt"
    target.write_text("precious")
    run_dir = tmp_path / "R"
    run_dir.mkdir()
    (run_dir / "results.md").symlink_to(target)
    one_line_error(capsys, "run", "demo", "--out", run_dir, "--epochs", "1", message="is a symbolic link")
    assert sorted(p.name for p in run_dir.iterdir()) == ["results.md"]  # not even config.yaml

    trained = tmp_path / "T"
    assert run_cli(capsys, "train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--no-progress",
               "--out", trained)[0] == 0
    (trained / "report").mkdir()
    (trained / "report" / "gamma_distribution.png").symlink_to(target)
    one_line_error(capsys, "report", trained, message="is a symbolic link")
    (trained / "report" / "gamma_distribution.png").unlink()
    (trained / "report").rmdir()
    (trained / "report").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    one_line_error(capsys, "report", trained, message="link")
    from netslim.report import write_report

    with pytest.raises(OutputRefused):
        write_report(trained)
    assert target.read_text() == "precious" and not (tmp_path / "elsewhere").exists()


def test_outputs_that_are_not_regular_files_are_refused(checkpoint, tmp_path, capsys):
    """A device node (/dev/null, copied here) or a socket as an output: refused, not replaced by a file."""
    sock, specials = _not_a_regular_file(tmp_path)
    try:
        for special in specials:
            one_line_error(capsys, "prune", checkpoint, "--out", special, "--overwrite", message="not a regular file")
            one_line_error(capsys, "prune", checkpoint, "--out", tmp_path / "s.pt", "--plan-out", special,
                           "--overwrite", message="not a regular file")
            one_line_error(capsys, "export", checkpoint, "--onnx", special, "--overwrite", message="not a regular file")
            one_line_error(capsys, "export", checkpoint, "--torchscript", special, "--overwrite",
                           message="not a regular file")
            with pytest.raises(OutputRefused, match="not a regular file"):
                netslim.plan_pruning(_compact(), 0.5).save(special, overwrite=True)
            with pytest.raises(OutputRefused, match="not a regular file"):
                write_atomic(special, b"x")
            assert not special.is_file() and special.exists()
    finally:
        sock.close()


def test_an_existing_output_is_replaced_only_when_asked(checkpoint, tmp_path, capsys):
    unrelated = tmp_path / "k.pt"
    save_checkpoint(unrelated, {"arch": describe(_compact(), "mlp", KWARGS), "state_dict": {}})
    before = unrelated.read_bytes()
    one_line_error(capsys, "prune", checkpoint, "--out", unrelated, message="exists: pass --overwrite")
    assert unrelated.read_bytes() == before
    assert run_cli(capsys, "prune", checkpoint, "--out", unrelated, "--overwrite")[0] == 0
    assert unrelated.read_bytes() != before

    (tmp_path / "m.ts").write_text("mine")
    one_line_error(capsys, "export", unrelated, "--torchscript", tmp_path / "m.ts", message="exists: pass --overwrite")
    assert (tmp_path / "m.ts").read_text() == "mine"
    assert run_cli(capsys, "export", unrelated, "--torchscript", tmp_path / "m.ts", "--overwrite")[0] == 0
    assert torch.jit.load(str(tmp_path / "m.ts")) is not None

    plan = netslim.plan_pruning(_compact(), 0.5)
    (tmp_path / "plan.json").write_text("mine")
    with pytest.raises(OutputRefused, match="overwrite=True"):
        plan.save(tmp_path / "plan.json")
    assert (tmp_path / "plan.json").read_text() == "mine"
    plan.save(tmp_path / "plan.json", overwrite=True)
    assert netslim.PruningPlan.load(tmp_path / "plan.json").kept == plan.kept
    with pytest.raises(OutputRefused, match="overwrite=True"):
        export_torchscript(_compact(), tmp_path / "m.ts")


def test_a_failed_export_keeps_the_previous_file_and_says_so(checkpoint, tmp_path, capsys, monkeypatch):
    """The artifact is checked before it replaces the previous one: a failing re-export leaves the good file."""
    import netslim.deployment as deployment
    from netslim.export import ExportError

    good = tmp_path / "m.ts"
    assert run_cli(capsys, "export", checkpoint, "--torchscript", good)[0] == 0
    before = good.read_bytes()

    def differs(*args, **kwargs):
        raise ExportError(f"{args[-1]}: the exported model differs from PyTorch")

    monkeypatch.setattr(deployment, "_check", differs)
    code, _, err = run_cli(capsys, "export", checkpoint, "--torchscript", good, "--overwrite")
    assert code != 0 and len(err.strip().splitlines()) == 1 and f"the previous {good} is kept" in err, err
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.ts"]  # no temporary file left


def test_a_failed_onnx_check_keeps_the_previous_file(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    import netslim.export as export

    good = export.export_onnx(_compact(), tmp_path / "m.onnx", check=False)
    before = good.read_bytes()

    def broken(model, path, *args, **kwargs):
        assert path != good  # the new file is checked before it takes the old one's place
        raise export.ExportError(f"{kwargs.get('shown_as')}: onnxruntime cannot run the file")

    monkeypatch.setattr(export, "check_onnx", broken)
    with pytest.raises(export.ExportError) as e:
        export.export_onnx(_compact(), good, overwrite=True)
    assert f"the previous {good} is kept" in e.value.__notes__[0]
    assert good.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_full_disk_while_exporting_is_one_line_and_keeps_the_previous_file(checkpoint, tmp_path, capsys,
                                                                               monkeypatch):
    import importlib.util

    artifacts = {"--torchscript": "m.ts", "--program": "m.pt2"}
    if importlib.util.find_spec("onnx"):  # an internal error and a 0-byte file, before
        artifacts["--onnx"] = "m.onnx"
    assert run_cli(capsys, "export", checkpoint, *(a for o, n in artifacts.items() for a in (o, tmp_path / n)))[0] == 0
    before = {name: (tmp_path / name).read_bytes() for name in artifacts.values()}
    on_a_full_disk(monkeypatch)
    for option, name in artifacts.items():
        one_line_error(capsys, "export", checkpoint, option, tmp_path / name, "--overwrite",
                message=f"the disk is full; the previous {tmp_path / name} is kept")
    one_line_error(capsys, "prune", checkpoint, "--out", tmp_path / "s.pt", "--plan-out", tmp_path / "p.json",
                   message="the disk is full")
    with pytest.raises(DiskFull, match="the disk is full; nothing was written"):
        netslim.plan_pruning(_compact(), 0.5).save(tmp_path / "q.json")
    assert {name: (tmp_path / name).read_bytes() for name in artifacts.values()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.pt", *artifacts.values()])


def test_a_kill_while_exporting_keeps_the_previous_file_and_the_next_run_removes_the_leftover(checkpoint,
                                                                                             tmp_path, capsys):
    """SIGKILL half-way through writing the file: the previous one stays whole; the temporary file the
    killed process left is removed by the next export of that name."""
    good = tmp_path / "m.ts"
    assert run_cli(capsys, "export", checkpoint, "--torchscript", good)[0] == 0
    before = good.read_bytes()
    script = textwrap.dedent(f"""
        import os, signal, sys
        import netslim.runfolder as runfolder
        real = os.write
        def write(fd, data):
            real(fd, bytes(data)[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        runfolder.os.write = write
        from netslim.cli import main
        sys.exit(main(["export", {str(checkpoint)!r}, "--torchscript", {str(good)!r}, "--overwrite"]))
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, env=_env())
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert good.read_bytes() == before
    leftovers = list(tmp_path.glob(".m.ts.*.tmp"))
    assert len(leftovers) == 1 and 0 < leftovers[0].stat().st_size < len(before)
    assert run_cli(capsys, "export", checkpoint, "--torchscript", good, "--overwrite")[0] == 0
    assert not list(tmp_path.glob(".m.ts.*")) and torch.jit.load(str(good)) is not None


def _env():
    src = os.path.dirname(os.path.dirname(netslim.__file__))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def test_a_killed_prunes_leftovers_are_removed_and_a_live_writers_are_not(checkpoint, tmp_path, capsys):
    stale = tmp_path / ".s.pt.k2j3h4.tmp"
    stale.write_bytes(b"partial")
    live = tmp_path / ".s.pt.live01.tmp"
    live.write_bytes(b"being written")
    with open(live, "rb") as writer:  # another process writing it: it holds its lock
        fcntl.flock(writer, fcntl.LOCK_EX)
        pruned = run_cli(capsys, "prune", checkpoint, "--out", tmp_path / "s.pt", "--plan-out", tmp_path / "p.json")
        assert pruned[0] == 0
        assert not stale.exists() and live.exists()
    assert clean_stale(tmp_path / "s.pt") == [live]  # once its writer is gone


def _hold(folder, exclusive=True):
    """Another process's lock on ``folder``: its own open file (flock conflicts across open files)."""
    handle = open(folder / LOCK_NAME, "a")
    fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    return handle


def test_prune_export_and_train_honour_the_run_folders_lock(checkpoint, tmp_path, capsys):
    """While another process trains in T (or runs in R), nothing else writes into T, or R's stages."""
    busy = tmp_path / "T"
    busy.mkdir()
    with _hold(busy):
        one_line_error(capsys, "prune", checkpoint, "--out", busy / "last.pt",
                       message="in use by another netslim process")
        one_line_error(capsys, "prune", checkpoint, "--out", tmp_path / "s.pt", "--plan-out", busy / "plan.json",
                message="in use by another")
        one_line_error(capsys, "export", checkpoint, "--torchscript", busy / "m.ts", message="in use by another")
        one_line_error(capsys, "train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--out",
                busy / "baseline", message="in use by another")
        with pytest.raises(FolderBusy):
            export_torchscript(_compact(), busy / "sub" / "m.ts")
        with pytest.raises(FolderBusy):
            netslim.plan_pruning(_compact(), 0.5).save(busy / "plan.json")
        assert sorted(p.name for p in busy.iterdir()) == [LOCK_NAME] and not (tmp_path / "s.pt").exists()
    inner = busy / "pass1"
    inner.mkdir()
    with _hold(busy, exclusive=False), _hold(inner):  # another process trains inside T: T cannot be taken
        with pytest.raises(FolderBusy), locked(busy):
            pass
        with locked(busy / "pass2"):  # a sibling stage may run beside it
            pass
    with locked(busy), locked(inner):  # one process: the run, then its stage
        save_checkpoint(inner / "x.pt", {"state_dict": {}})
        write_atomic(inner / "notes.txt", "ok")
    assert run_cli(capsys, "prune", checkpoint, "--out", busy / "s.pt")[0] == 0  # free again


def test_a_refused_command_leaves_no_folder_behind(tmp_path, capsys):
    """Validation before the output is touched: no config.yaml, no lock, no empty folders."""
    train = ["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--no-progress"]
    one_line_error(capsys, "run", "demo", "--device", "tpu", "--out", tmp_path / "X", message="unknown device")
    one_line_error(capsys, *train, "--device", "tpu", "--out", tmp_path / "a" / "b" / "c", message="unknown device")
    one_line_error(capsys, "train", "--model", "nosuchmodel", "--dataset", "digits", "--out", tmp_path / "d" / "e",
                   message="unknown model")
    one_line_error(capsys, "train", "--model", "mlp", "--dataset", "nosuchdata", "--out", tmp_path / "f", message="")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    existing = tmp_path / "empty"
    existing.mkdir()
    one_line_error(capsys, "run", "demo", "--device", "tpu", "--out", existing, message="unknown device")
    one_line_error(capsys, *train, "--device", "tpu", "--out", existing, message="unknown device")
    one_line_error(capsys, "train", "--model", "nosuchmodel", "--dataset", "digits", "--out", existing)
    assert list(existing.iterdir()) == []
    from netslim.pipeline import load_config, overridden, run_experiment

    with pytest.raises(ValueError, match="unknown device"):
        run_experiment(overridden(load_config("demo"), device="tpu"), tmp_path / "Y")
    assert not (tmp_path / "Y").exists()


def test_replacing_keeps_the_previous_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "a.bin"
    write_atomic(path, b"old")
    with pytest.raises(RuntimeError) as e, replacing(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer failed")
    assert path.read_bytes() == b"old" and f"the previous {path} is kept" in e.value.__notes__
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]

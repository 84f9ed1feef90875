"""Every user error is one line and exit 2, before any work: malformed checkpoints,
models that do not fit the data, outputs that would overwrite inputs, user factories that raise or exit,
a closed output pipe, names the file system refuses."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from netslim import models
from netslim.checkpoint import describe, save_checkpoint
from netslim.cli import main

from .conftest import on_a_full_disk, one_line_error, run_cli

pytest.importorskip("sklearn")  # the embedded digits dataset

TRAIN = ["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    assert main([*TRAIN, "--sparsity", "1e-2", "--bn-init", "0.5", "--out", str(out)]) == 0
    return out / "last.pt"


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A user's model module: a factory that works but declares no input size, and some that misbehave."""
    (tmp_path / "usermodels.py").write_text(textwrap.dedent("""
        import sys
        from torch import nn

        def small(num_classes=10):
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                 nn.Linear(32, num_classes))

        def broken(num_classes=10):
            raise RuntimeError("my factory is broken")

        def quits(num_classes=10):
            sys.exit(0)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("usermodels", None)


def _checkpoint(path, arch, state_dict=None):
    save_checkpoint(path, {"arch": arch, "state_dict": {} if state_dict is None else state_dict})
    return path


def test_malformed_checkpoints(tmp_path, capsys):
    mlp = models.create("mlp")
    shapes = describe(mlp, "mlp")["shapes"]
    cases = {
        "noarch.pt": ({"kwargs": {}}, "does not name its architecture"),
        "listweights.pt": (describe(mlp, "mlp"), "malformed state_dict"),
        "negative.pt": ({**describe(mlp, "mlp"), "shapes": {**shapes, "hidden.0": [784, -5, True, False]}}, ""),
        "absurd.pt": ({**describe(mlp, "mlp"), "shapes": {**shapes, "hidden.0": [784, 10 ** 12, True, False]}}, ""),
    }
    for name, (arch, message) in cases.items():
        _checkpoint(tmp_path / name, arch, [1, 2] if name == "listweights.pt" else None)
        for argv in (["info", tmp_path / name], ["prune", tmp_path / name, "--out", tmp_path / "s.pt"]):
            one_line_error(capsys, *argv, message=message)
    save_checkpoint(tmp_path / "empty.pt", {"state_dict": {}})
    one_line_error(capsys, "info", tmp_path / "empty.pt", message="does not describe its architecture")
    (tmp_path / "junk.pt").write_text("hello\n")
    err = one_line_error(capsys, "prune", tmp_path / "junk.pt", "--out", tmp_path / "s.pt",
                         message="not a PyTorch checkpoint (a text file")
    assert "pickled code" not in err
    assert not (tmp_path / "s.pt").exists()


def test_models_that_do_not_fit_the_data_or_the_input_size(tmp_path, capsys):
    one_line_error(capsys, "info", "mlp", "--input-size", "3,32,32", message="mlp cannot take an input of size 3,32,32")
    one_line_error(capsys, *TRAIN, "--model", "vgg11", "--out", tmp_path / "a", message="vgg11 cannot take the 1x8x8")
    one_line_error(capsys, *TRAIN, "--num-classes", "3", "--out", tmp_path / "b",
                   message="predicts 3 classes but digits has 10")
    assert not (tmp_path / "a" / "last.pt").exists() and not (tmp_path / "b" / "last.pt").exists()


def test_user_factories_that_raise_or_exit_or_do_not_exist(user_package, capsys):
    one_line_error(capsys, "prune", "usermodels:broken", "--out", "s.pt",
                   message="model factory 'usermodels:broken' raised RuntimeError: my factory is broken")
    one_line_error(capsys, "prune", "usermodels:quits", "--out", "s.pt", message="called sys.exit(0)")
    one_line_error(capsys, *TRAIN, "--model", "usermodels:quits", "--out", "t", message="called sys.exit(0)")
    assert not (user_package / "s.pt").exists() and not (user_package / "t" / "last.pt").exists()
    err = one_line_error(capsys, "info", "nosuchpkg.models:net",
                         message="cannot import 'nosuchpkg.models' for model factory")
    assert "folder that holds nosuchpkg/" in err and "PYTHONPATH" in err
    assert "it must be" not in err
    one_line_error(capsys, "info", "usermodels:nosuch", message="has no function 'nosuch'")


def test_a_model_without_input_size_learns_it_from_the_data_or_the_command_line(user_package, capsys):
    assert main([*TRAIN, "--model", "usermodels:small", "--out", "t"]) == 0
    assert torch.load("t/last.pt", weights_only=True)["arch"]["input_size"] == [1, 8, 8]  # stored once known
    capsys.readouterr()
    code, out, err = run_cli(capsys, "export", "t/last.pt", "--factory", "usermodels:small", "--torchscript", "m.ts")
    assert code == 0, err
    bare = models.create_model("usermodels:small", {})
    _checkpoint(user_package / "bare.pt", describe(bare, "usermodels:small"), bare.state_dict())
    one_line_error(capsys, "export", "bare.pt", "--factory", "usermodels:small", "--torchscript", "b.ts",
                   message="does not declare its input size: pass --input-size")
    code, _, err = run_cli(capsys, "export", "bare.pt", "--factory", "usermodels:small", "--torchscript", "b.ts",
                       "--input-size", "1,8,8")
    assert code == 0, err


def test_outputs_never_overwrite_inputs(trained, tmp_path, capsys):
    before = trained.read_bytes()
    cases = [
        (["prune", trained, "--out", trained], "--out"),
        (["prune", trained, "--out", tmp_path / "s.pt", "--plan-out", trained], "--plan-out"),
        (["prune", trained, "--out", tmp_path / "s.pt", "--plan-out", tmp_path / "s.pt"], "the same file"),
        (["export", trained, "--program", trained], "--program"),
        (["export", trained, "--torchscript", trained.parent / "." / "last.pt"], "--torchscript"),
        (["export", trained, "--onnx", tmp_path / "m", "--torchscript", tmp_path / "m"], "the same file"),
        ([*TRAIN, "--from", trained.parent / "best.pt", "--out", trained.parent, "--no-resume"], "--from"),
        (["finetune", trained, "--dataset", "digits", "--out", trained.parent], "checkpoint"),
    ]
    for argv, message in cases:
        one_line_error(capsys, *argv, message=message)
    assert trained.read_bytes() == before and not (tmp_path / "s.pt").exists()


def test_an_unwritable_plan_out_is_found_before_out_is_written(trained, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    one_line_error(capsys, "prune", trained, "--out", tmp_path / "s.pt", "--plan-out", tmp_path / "afile" / "p.json",
                   message="--plan-out")
    one_line_error(capsys, "prune", trained, "--out", tmp_path / "s.pt", "--plan-out", tmp_path,
                   message="is a folder")
    assert not (tmp_path / "s.pt").exists()


def test_names_that_cannot_be_outputs(trained, tmp_path, capsys):
    long = "n" * 300
    one_line_error(capsys, "prune", trained, "--out", tmp_path / f"{long}.pt", message="bytes long")
    one_line_error(capsys, "export", trained, "--torchscript", tmp_path / f"{long}.ts", message="bytes long")
    one_line_error(capsys, *TRAIN, "--out", tmp_path / long, message="cannot create output folder")
    cwd = os.getcwd()
    for argv in ([*TRAIN, "--out", ""], ["prune", trained, "--out", ""], ["run", "demo", "--out", " "]):
        one_line_error(capsys, *argv, message="is empty")
    assert os.getcwd() == cwd and not os.path.exists("last.pt")


def test_a_full_disk_is_one_line(trained, tmp_path, capsys, monkeypatch):
    on_a_full_disk(monkeypatch)
    one_line_error(capsys, "prune", trained, "--out", tmp_path / "s.pt", message="the disk is full")
    one_line_error(capsys, *TRAIN, "--out", tmp_path / "t", message="the disk is full")


def test_divergence_is_a_user_error_with_a_true_message(tmp_path, capsys):
    one_line_error(capsys, *TRAIN, "--lr", "1e30", "--out", tmp_path, message="no checkpoint was written")
    one_line_error(capsys, *TRAIN, "--bn-init", "nan", "--out", tmp_path, message="--bn-init: nan must be > 0")


def test_report_of_folders_without_history_or_with_a_bad_plan(trained, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    save_checkpoint(tmp_path / "a" / "last.pt", {"state_dict": {}})  # no history, no γ
    one_line_error(capsys, "report", tmp_path / "a", message="no training history")
    (tmp_path / "b" / "pass1").mkdir(parents=True)
    (tmp_path / "b" / "last.pt").write_bytes(trained.read_bytes())
    (tmp_path / "b" / "pass1" / "plan.json").write_text('{"kept": 3}')
    one_line_error(capsys, "report", tmp_path / "b", message="is not a pruning plan")


def test_a_closed_output_pipe_is_one_line_on_stderr():
    read, write = os.pipe()
    os.close(read)  # `| head -c 10` that has already gone
    proc = subprocess.run([sys.executable, "-m", "netslim.cli", "info", "vgg19"], stdout=write,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "netslim: error: the output pipe was closed before everything was written"


def test_budget_and_plan_messages_say_what_is_true(trained, tmp_path, capsys):
    err = one_line_error(capsys, "prune", trained, "--target-flops", "0.0001", "--out", tmp_path / "s.pt")
    assert "0.01% FLOPs" in err and "0.0%" not in err
    from netslim import apply_plan, plan_pruning
    from netslim.plan import PruningPlan

    model = models.create("mlp")
    plan = plan_pruning(model, 0.5).to_dict()
    plan["kept"]["hidden.1"] = [0, 10000]
    with pytest.raises(ValueError, match="keeps channel 10000 of layer 'hidden.1', which has channels 0..499"):
        apply_plan(model, PruningPlan.from_dict(plan))


def test_sgd_with_a_huge_lambda_is_not_told_to_raise_it(tmp_path, capsys):
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "2", "--sparsity", "10", "--out", tmp_path)
    assert code == 0 and "λ is too strong for SGD" in err and "raise λ" not in err


def test_a_torch_internal_warning_of_the_archive_writer_does_not_leak(trained, tmp_path, capsys, monkeypatch):
    """torch.export.save warns 'No complete tensor found in the group!' for weights it stores whole (seen on
    pruned models whose weights were views); it is torch's bookkeeping, not something the user can act on."""
    import warnings

    real = torch.export.save

    def save(*args, **kwargs):
        warnings.warn("No complete tensor found in the group! Returning the first one. This may cause issues",
                      stacklevel=2)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.export, "save", save)
    code, _, err = run_cli(capsys, "export", trained, "--target", "cpu", "--program", tmp_path / "m.pt2")
    assert code == 0 and "No complete tensor" not in err, err


def test_export_onnx_without_onnx_says_what_to_install_before_writing(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as on a machine without it
    one_line_error(capsys, "export", trained, "--torchscript", tmp_path / "m.ts", "--onnx", tmp_path / "m.onnx",
                   message="--onnx needs the onnx package: pip install onnx")
    assert not (tmp_path / "m.ts").exists() and not (tmp_path / "m.onnx").exists()


def test_numbers_and_sizes_out_of_range_are_one_line_before_any_work(trained, tmp_path, capsys):
    """Each used to exit 3 or say something cryptic ("Overflow when unpacking long long", "expected non-negative
    integer", an input of 3,3 for 3,x,3)."""
    for seed in ("99999999999999999999999", "-1", "4294967296"):
        one_line_error(capsys, *TRAIN, "--seed", seed, "--out", tmp_path / "t", message="is not a seed")
    assert not (tmp_path / "t").exists()
    config = tmp_path / "c.yaml"
    config.write_text("model: mlp\ndataset: digits\ntrain: {epochs: 1, seed: -1}\n")
    one_line_error(capsys, "run", config, "--out", tmp_path / "r", message="seed must be an integer in [0, 2**32)")
    for size in ("3,x,3", "3,,3", "x", "3,32,32,32,32", "3,100000,3"):
        one_line_error(capsys, "info", "mlp", "--input-size", size, message="is not a size")
    one_line_error(capsys, "prune", "mlp", "--target-speedup", "2", "--latency-batch", "100000000",
                   "--out", tmp_path / "s.pt", message="latency batch of 100000000")
    one_line_error(capsys, "export", trained, "--onnx", tmp_path / "m.onnx", "--opset", "9999",
                   message="is not an opset the ONNX exporter writes")
    one_line_error(capsys, "export", trained, "--onnx", tmp_path / "m.onnx", "--opset", "1", message="(7 to")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_resuming_with_other_builder_arguments_names_them(tmp_path, capsys):
    assert main([*TRAIN, "--out", str(tmp_path)]) == 0
    err = one_line_error(capsys, *TRAIN, "--num-classes", "12", "--out", tmp_path,
                         message="model kwargs.num_classes 10 (now 12)")
    assert "'mlp' (now 'mlp')" not in err


def test_a_report_of_a_file_says_it_is_a_file(trained, capsys):
    one_line_error(capsys, "report", trained, message="is a file, not a run folder")

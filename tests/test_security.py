"""Nothing named in a file is executed (issue 15 #1): a checkpoint's architecture name rebuilds only
registered and zoo models; a factory path runs only when the user names it for that load."""

import pytest
import torch

from netslim import models
from netslim.checkpoint import CheckpointError, describe, load_model, save_checkpoint
from netslim.cli import main

PAYLOADS = [("subprocess:getoutput", {"cmd": "touch PWNED"}), ("os:system", {"command": "touch PWNED"}),
            ("builtins:exec", {"source": "open('PWNED', 'w')"})]


def _hostile(path, name, kwargs):
    save_checkpoint(path, {"arch": {"name": name, "kwargs": kwargs, "shapes": {}}, "state_dict": {}})


@pytest.mark.parametrize("name,kwargs", PAYLOADS)
def test_a_factory_named_in_a_checkpoint_never_runs_from_any_command(name, kwargs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _hostile(tmp_path / "evil.pt", name, kwargs)
    commands = [["info", "evil.pt"], ["prune", "evil.pt", "--out", "small.pt"],
                ["finetune", "evil.pt", "--dataset", "digits", "--out", "ft", "--epochs", "1"],
                ["train", "--model", "mlp", "--from", "evil.pt", "--dataset", "digits", "--out", "tr", "--epochs", "1"],
                ["export", "evil.pt", "--onnx", "evil.onnx"]]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--factory {name}" in err, (argv, err)
        assert not (tmp_path / "PWNED").exists(), argv


def test_a_different_factory_on_the_command_line_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _hostile(tmp_path / "evil.pt", "subprocess:getoutput", {"cmd": "touch PWNED"})
    assert main(["info", "evil.pt", "--factory", "netslim.models:vgg11"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not 'netslim.models:vgg11'" in err
    assert not (tmp_path / "PWNED").exists()


def test_the_named_factory_rebuilds_the_checkpoint(tmp_path, capsys):
    model = models.create_model("netslim.models:mlp", {"num_classes": 3})
    save_checkpoint(tmp_path / "m.pt", {"arch": describe(model, "netslim.models:mlp", {"num_classes": 3}),
                                        "state_dict": model.state_dict()})
    with pytest.raises(CheckpointError, match="--factory netslim.models:mlp"):
        load_model(tmp_path / "m.pt")
    rebuilt, _ = load_model(tmp_path / "m.pt", factory="netslim.models:mlp")
    pairs = zip(rebuilt.state_dict().values(), model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    rebuilt, _ = load_model(tmp_path / "m.pt", factory=models.mlp)  # or the function itself, from Python
    assert rebuilt(torch.zeros(2, 1, 28, 28)).shape == (2, 3)
    assert main(["info", str(tmp_path / "m.pt"), "--factory", "netslim.models:mlp", "--json"]) == 0


@pytest.mark.parametrize("name,kwargs,why", [
    ("timm:resnet18", {"checkpoint_path": "/tmp/evil.pkl"}, "checkpoint_path"),
    ("timm:resnet18", {"pretrained_cfg_overlay": {"url": "http://x"}}, "pretrained_cfg_overlay"),
    ("torchvision:resnet18", {"weights": "DEFAULT"}, "weights"),
    ("timm:hf-hub:someone/model", {}, "plain name"),
    ("timm:../../evil", {}, "plain name"),
    ("no_such_model", {}, "not registered"),
])
def test_zoo_names_from_a_file_cannot_fetch_or_load_anything_else(name, kwargs, why, tmp_path):
    _hostile(tmp_path / "c.pt", name, kwargs)
    with pytest.raises(CheckpointError, match=why):
        load_model(tmp_path / "c.pt")


@pytest.mark.parametrize("arch", [{"name": "mlp", "kwargs": [1, 2]}, {"name": "mlp", "shapes": {"net.0": [1, 2]}},
                                  {"name": "mlp", "kwargs": {"bogus": 1}}, "mlp", {"kwargs": {}}])
def test_malformed_architecture_descriptions_are_one_clear_error(arch, tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"arch": arch, "state_dict": {}})
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "c.pt")

"""Nothing named in a file is executed: a checkpoint's architecture name rebuilds only
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


# -- resource bombs: what a weights-only file may ask for is bounded before anything is allocated --

_BOMBS = r'''
import json, os, sys, time, zipfile
import torch
from netslim import models
from netslim.checkpoint import CheckpointError, describe, load_model, save_checkpoint

os.chdir(sys.argv[1])
mlp = models.create("mlp", widths=[8, 8])
arch = describe(mlp, "mlp", {"widths": [8, 8]})
def hostile(name, arch, weights):
    save_checkpoint(name, {"arch": arch, "state_dict": weights})
hostile("wide.pt", {"name": "vgg19", "kwargs": {"widths": [10**9] * 16}, "shapes": {}}, {})
hostile("wide_sized.pt", {"name": "vgg19", "kwargs": {"widths": [60000] * 16}, "shapes": {}}, {})
hostile("long.pt", {"name": "mlp", "kwargs": {"widths": [1] * 300000}, "shapes": {}}, {})
hostile("expanded.pt", arch, {**mlp.state_dict(), "hidden.0.weight": torch.zeros(1).expand(100000, 100000)})
# narrowed to the file's tiny weights, but built wide first: the unnarrowed model is sized too
hostile("narrowed.pt", {**arch, "kwargs": {"widths": [60000, 60000]}}, mlp.state_dict())
save_checkpoint("big.pt", {"arch": arch, "state_dict": {**mlp.state_dict(), "extra": torch.zeros(50_000_000)}})
with zipfile.ZipFile("big.pt") as z, zipfile.ZipFile("deflated.pt", "w", zipfile.ZIP_DEFLATED) as out:
    for info in z.infolist():
        out.writestr(info.filename, z.read(info.filename))
os.remove("big.pt")
outcome = {}
for name in ("wide.pt", "wide_sized.pt", "long.pt", "expanded.pt", "narrowed.pt", "deflated.pt"):
    start = time.process_time()  # CPU seconds: the test machine may be busy with other work
    try:
        load_model(name)
        outcome[name] = ["loaded", time.process_time() - start]
    except CheckpointError as e:
        outcome[name] = [str(e), time.process_time() - start]
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]  # this process's own peak
print(json.dumps({"outcome": outcome, "peak_kib": int(peak[0].split()[1]) if peak else None}))
'''


def test_resource_bombs_in_weights_only_files_are_refused_in_bounded_time_and_memory(tmp_path):
    import json
    import subprocess
    import sys

    # its own process, so that its peak memory is its own (VmHWM: ru_maxrss would count the test process it
    # was forked from), and a bomb cannot take the test run down
    done = subprocess.run([sys.executable, "-c", _BOMBS, str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    outcome, peak_kib = report["outcome"], report["peak_kib"]
    if peak_kib is not None:  # Linux
        assert peak_kib / 1024 < 1500, (peak_kib, outcome)  # writing the deflated file holds 200 MB; loading adds none
    for name, (message, seconds) in outcome.items():
        assert message != "loaded" and name in message, (name, message)
        assert len(message.splitlines()) == 1 and seconds < 5, (name, message, seconds)
    assert "compressed" in outcome["deflated.pt"][0] and "broadcast view" in outcome["expanded.pt"][0]
    assert "parameters" in outcome["wide_sized.pt"][0] and "parameters" in outcome["narrowed.pt"][0]


@pytest.mark.parametrize("widths,why", [([-5], "cannot rebuild 'mlp'"), (["abc"], "cannot rebuild 'mlp'"),
                                        ([[[[[[[[1]]]]]]]], "nested"), ([2**40], "value")])
def test_builder_arguments_a_builder_rejects_name_the_file_on_the_cli_and_the_api(widths, why, tmp_path, capsys):
    _hostile(tmp_path / "c.pt", "mlp", {"widths": widths})
    with pytest.raises(CheckpointError, match=why) as e:
        load_model(tmp_path / "c.pt")
    assert str(tmp_path / "c.pt") in str(e.value)
    assert main(["info", str(tmp_path / "c.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "c.pt" in err and why in err


def test_weights_that_do_not_fit_are_named_in_one_short_line(tmp_path):
    model = models.create("mlp", widths=[8, 8])
    weights = {**model.state_dict(), "hidden.0.weight": torch.zeros(3, 3)}
    save_checkpoint(tmp_path / "c.pt", {"arch": describe(model, "mlp", {"widths": [8, 8]}), "state_dict": weights})
    with pytest.raises(CheckpointError, match=r"'hidden.0.weight' is \(3, 3\) in the file") as e:
        load_model(tmp_path / "c.pt")
    assert len(str(e.value)) < 200


def test_a_plain_pickle_or_legacy_file_is_named_as_such_and_loads_only_when_trusted(tmp_path):
    import pickle

    with open(tmp_path / "p.pt", "wb") as f:
        pickle.dump({"a": 1}, f, protocol=4)
    torch.save(models.create("mlp").state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("p.pt", "legacy.pt"):
        with pytest.raises(CheckpointError, match="plain pickle"):
            load_model(tmp_path / name)

import pickle

import pytest
import torch

from netslim import apply_plan, models, plan_pruning
from netslim.checkpoint import (
    CheckpointError,
    build_model,
    describe,
    load_checkpoint,
    load_model,
    save_checkpoint,
)

from .conftest import randomize_bn


def _compact():
    model = randomize_bn(models.create("preresnet20")).eval()
    return apply_plan(model, plan_pruning(model, 0.5)).eval()


def test_pruned_checkpoint_is_self_describing_and_loads_weights_only(tmp_path):
    small = _compact()
    save_checkpoint(tmp_path / "c.pt", {"arch": describe(small, "preresnet20"), "state_dict": small.state_dict()})
    raw = torch.load(tmp_path / "c.pt", weights_only=True)  # plain data, no pickled code
    assert raw["arch"]["name"] == "preresnet20"
    rebuilt, _ = load_model(tmp_path / "c.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), small(x))


def test_build_model_gives_the_pruned_shapes():
    small = _compact()
    rebuilt = build_model(describe(small, "preresnet20"))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}


def test_atomic_write_keeps_the_previous_checkpoint_when_writing_fails(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "c.pt", {"value": torch.ones(3)})

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointError, match="disk is full.*previous checkpoint is kept"):
        save_checkpoint(tmp_path / "c.pt", {"value": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["value"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_unwritable_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if (folder / "probe").exists() or _can_write(folder):
            pytest.skip("running with privileges that ignore permissions")
        with pytest.raises(CheckpointError, match="cannot write checkpoint"):
            save_checkpoint(folder / "c.pt", {"x": torch.ones(1)})
    finally:
        folder.chmod(0o700)


def _can_write(folder):
    try:
        (folder / "probe").write_text("x")
        return True
    except OSError:
        return False


def test_truncated_file(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"state_dict": {"w": torch.randn(100, 100)}})
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "c.pt")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_holding_pickled_code_is_refused(tmp_path):
    torch.save({"format": "netslim-checkpoint-v1", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="pickled code"):
        load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "plain.pkl")


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a netslim checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_weights_of_another_architecture(tmp_path):
    vgg = models.create("vgg11")
    save_checkpoint(tmp_path / "c.pt", {"arch": describe(vgg, "vgg13"), "state_dict": vgg.state_dict()})
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "c.pt")


def test_nan_weights_are_refused(tmp_path):
    mlp = models.create("mlp")
    state = mlp.state_dict()
    state["classifier.weight"][0, 0] = float("nan")
    save_checkpoint(tmp_path / "c.pt", {"arch": describe(mlp, "mlp"), "state_dict": state})
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_model(tmp_path / "c.pt")

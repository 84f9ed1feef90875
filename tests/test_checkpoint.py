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

from .conftest import on_a_full_disk, randomize_bn


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


def test_a_full_disk_is_the_disk_is_full_error_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    """ENOSPC from the kernel (/dev/full), which torch's zip writer used to report as an inline_container
    RuntimeError; no temporary file is left behind."""
    save_checkpoint(tmp_path / "c.pt", {"state_dict": {"w": torch.ones(3)}})
    before = (tmp_path / "c.pt").read_bytes()
    on_a_full_disk(monkeypatch)
    with pytest.raises(CheckpointError, match="the disk is full; the previous checkpoint is kept"):
        save_checkpoint(tmp_path / "c.pt", {"state_dict": {"w": torch.zeros(100_000)}})
    assert (tmp_path / "c.pt").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_a_long_checkpoint_name_still_fits_its_temporary_file(tmp_path):
    path = tmp_path / ("n" * 250 + ".pt")
    save_checkpoint(path, {"state_dict": {}})
    assert load_checkpoint(path)["state_dict"] == {}


@pytest.mark.parametrize("content, message", [
    (b"hello\n", "not a PyTorch checkpoint (a text file starting 'hello')"),
    (b"model: 1\nnot: pickled\n", "not a PyTorch checkpoint (a text file"),
    (bytes(range(200, 256)) * 4, "not a PyTorch checkpoint (unknown binary data)"),
    (b"", "not a PyTorch checkpoint (an empty file)"),
    (b"\x80\x02\x95garbage", "not a PyTorch checkpoint (a truncated or corrupt pickle)"),
])
def test_files_that_are_not_checkpoints_are_named_for_what_they_are(content, message, tmp_path):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        load_checkpoint(tmp_path / "x.pt")
    assert "pickled code" not in str(e.value)


@pytest.mark.parametrize("payload", [{"state_dict": [1, 2]}, {"state_dict": {"w": "not a tensor"}},
                                     {"state_dict": {1: torch.zeros(1)}}])
def test_a_malformed_state_dict_is_refused_when_read(payload, tmp_path):
    save_checkpoint(tmp_path / "c.pt", payload)
    with pytest.raises(CheckpointError, match="malformed state_dict"):
        load_checkpoint(tmp_path / "c.pt")


def test_the_input_size_a_factory_model_lacks_is_kept_in_its_checkpoint(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 3))
    model.input_size = (1, 8, 8)
    save_checkpoint(tmp_path / "c.pt", {"arch": describe(model, "tests.test_checkpoint:_factory"),
                                        "state_dict": model.state_dict()})
    rebuilt, _ = load_model(tmp_path / "c.pt", factory=_factory)
    assert rebuilt.input_size == (1, 8, 8)


def _factory():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 3))

import sys

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import netslim
from netslim.export import ExportError, check_onnx, export_onnx, fold_batchnorm, foldable_pairs, relative_error

from .conftest import randomize_bn

MODELS = {
    "vgg11": dict(widths=[16, 32, 64, 64, 128, 128, 128, 128]),
    "mlp": {},
    "preresnet20": {},
    "densenet40": {},
}
_cache: dict[str, nn.Module] = {}


def _model(name: str, pruned: bool) -> nn.Module:
    key = f"{name}-{pruned}"
    if key not in _cache:
        model = randomize_bn(netslim.models.create(name, **MODELS[name])).eval()
        if pruned:
            model = netslim.apply_plan(model, netslim.plan_pruning(model, 0.5)).eval()
        _cache[key] = model
    return _cache[key]


def _bns(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("pruned", [False, True])
def test_folding_keeps_eval_outputs(name, pruned):
    model = _model(name, pruned)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    x = torch.randn(4, *model.input_size)
    with torch.no_grad():
        assert relative_error(folded(x), model(x)) <= 1e-4
    # the original is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pairs = foldable_pairs(model)
    assert len(_bns(folded)) == len(_bns(model)) - len(pairs)
    assert sum(isinstance(m, nn.Identity) for m in folded.modules()) >= len(pairs)
    if name in ("vgg11", "mlp"):
        assert not _bns(folded)  # every BN follows a conv/linear
    if name == "preresnet20":
        assert all(p.endswith(("bn2", "bn3")) for p in pairs)  # bn1 and the last BN read the stream
        assert len(_bns(folded)) == 7  # 6 blocks' bn1 and the final BN stay
    if name == "densenet40":
        assert not pairs  # every BN reads a concatenation: all are selection BNs


class _Mixed(nn.Module):
    """Conv -> BN, depthwise -> BN, two depthwise branches on one tensor, a transposed conv -> BN,
    a BN without running statistics, and a conv whose output is also read elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.input_size = (3, 8, 8)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw_a = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.dw_b = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn_a = nn.BatchNorm2d(8)
        self.bn_b = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.bn_up = nn.BatchNorm2d(6)
        self.shared = nn.Conv2d(6, 6, 1)
        self.bn_shared = nn.BatchNorm2d(6)
        self.batch_stats = nn.Conv2d(6, 4, 1)
        self.bn_batch = nn.BatchNorm2d(4, track_running_stats=False)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        a = self.dw_a(x)
        b = self.dw_b(x)  # called before bn_a: graph order alone would pair bn_a with dw_b
        x = torch.relu(self.bn_a(a) + self.bn_b(b))
        x = torch.relu(self.bn_up(self.up(x)))
        s = self.shared(x)
        x = self.bn_shared(s) + s  # the conv's output has two users: not folded
        x = self.bn_batch(self.batch_stats(x))
        return self.head(x.mean((2, 3)))


def test_folding_picks_the_right_producer_and_skips_what_cannot_fold():
    model = _Mixed()
    model.bn_batch = nn.Identity()
    randomize_bn(model)
    model.bn_batch = nn.BatchNorm2d(4, track_running_stats=False)  # normalizes with batch statistics
    model.eval()
    pairs = foldable_pairs(model)
    assert pairs == {"bn": "conv", "bn_a": "dw_a", "bn_b": "dw_b", "bn_up": "up"}
    folded = fold_batchnorm(model)
    assert isinstance(folded.bn_shared, nn.BatchNorm2d) and isinstance(folded.bn_batch, nn.BatchNorm2d)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert relative_error(folded(x), model(x)) <= 1e-4


def test_folded_copy_is_in_eval_mode_and_conv_gets_a_bias():
    model = randomize_bn(netslim.models.create("vgg11", widths=[8] * 8)).train()
    folded = fold_batchnorm(model)
    assert model.training and not folded.training
    assert folded.features[0].bias is not None and model.features[0].bias is None


@pytest.mark.parametrize("name", ["vgg11", "preresnet20"])
@pytest.mark.parametrize("pruned", [False, True])
def test_onnx_round_trip(tmp_path, name, pruned):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _model(name, pruned)
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # the batch axis is dynamic
        x = torch.randn(batch, *model.input_size)
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        with torch.no_grad():
            assert relative_error(got, model(x)) <= 1e-4
    ops = {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
    assert "Conv" in ops and ("BatchNormalization" not in ops or name == "preresnet20")


def test_onnx_mismatch_is_a_clear_error(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = _model("mlp", False)
    path = export_onnx(model, tmp_path / "mlp.onnx", fold=False)
    other = randomize_bn(netslim.models.create("mlp"), seed=1).eval()
    with pytest.raises(ExportError, match="differs from PyTorch"):
        check_onnx(other, path, other.input_size)


def test_export_does_not_need_onnxruntime(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    model = _model("vgg11", True)
    path = export_onnx(model, tmp_path / "m.onnx")
    assert path.exists() and path.stat().st_size > 0
    assert check_onnx(model, path, model.input_size) is None


def test_export_without_onnx_says_what_to_install(tmp_path, monkeypatch):
    """torch's ONNX exporters need the onnx package (torch 2.13 and 2.14 alike): an ImportError naming it."""
    monkeypatch.setitem(sys.modules, "onnx", None)  # find_spec("onnx") -> None, import onnx -> ImportError
    with pytest.raises(ImportError, match="pip install onnx"):
        export_onnx(netslim.models.create("mlp", widths=[8, 4], input_size=(1, 4, 4), num_classes=3),
                    tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()

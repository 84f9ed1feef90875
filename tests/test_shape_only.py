"""Stand-ins for the heavy ops: the analysis and the surgery give what they give with every op computed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netslim
from netslim import shape_only
from netslim.shape_only import ShapeOnly

from . import topologies
from .conftest import randomize_bn

CONVS = [
    (nn.Conv2d(8, 16, 3, padding=1), (2, 8, 9, 7)),
    (nn.Conv2d(8, 16, 3, stride=2, dilation=2, groups=4), (1, 8, 15, 12)),
    (nn.Conv2d(8, 4, 5, padding="same", bias=False), (2, 8, 6, 6)),
    (nn.Conv2d(8, 4, 2, padding="valid", stride=(2, 1)), (2, 8, 7, 5)),
    (nn.Conv1d(6, 3, 4, stride=3), (2, 6, 20)),
    (nn.Conv3d(4, 2, (1, 3, 3), padding=(0, 1, 1)), (1, 4, 3, 5, 5)),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), (2, 4, 6, 6)),
    (nn.Linear(12, 5), (2, 7, 12)),
]


@pytest.mark.parametrize("layer,shape", CONVS, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "")
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_stand_in_has_the_shape_strides_and_dtype_of_the_real_output(layer, shape, channels_last):
    x = torch.randn(*shape)
    if channels_last and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    expected = layer(x)
    with ShapeOnly([x]).running():
        got = layer(x)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert got.stride() == expected.stride()
    assert not torch.equal(got, expected)  # not computed: a stand-in
    assert got.std() > 0.5  # random, not constant


def test_a_stand_in_refuses_operands_the_op_refuses():
    x = torch.randn(1, 6, 8, 8)
    with pytest.raises(RuntimeError), ShapeOnly([x]).running():
        nn.Conv2d(8, 4, 3)(x)
    with pytest.raises(RuntimeError), ShapeOnly([x]).running():
        nn.Conv2d(6, 4, 9)(x)  # kernel larger than the map
    with pytest.raises(RuntimeError), ShapeOnly([x]).running():
        nn.Linear(7, 2)(x)


def test_ops_on_constants_and_inside_exact_modules_are_computed():
    x, weight = torch.randn(1, 3, 5, 5), torch.randn(4, 3)
    inner, outer = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
    expected = inner(x), outer(x)
    with ShapeOnly([x], exact=[inner]).running():
        assert torch.equal(weight @ weight.T, torch.mm(weight, weight.T))  # nothing from the input
        assert torch.equal(inner(x), expected[0])
        assert not torch.equal(outer(x), expected[1])


class SigmoidTimesGate(nn.Module):
    """A removed channel that is not zero but sigmoid(0) = 0.5 times a gate computed from the input: with real
    values it varies (the surgery says it cannot fold it); stand-ins must not make it look constant."""

    input_size = (3, 12, 12)

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.gate = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.sigmoid(self.bn(self.conv(x))) * torch.sigmoid(self.gate(x)))


MODELS = {name: lambda name=name: topologies.create(name)
          for name in ("resnet50", "densenet121", "efficientnet", "tiny_yolo", "se_on_branch", "unet")}
MODELS["sigmoid_times_gate"] = SigmoidTimesGate


@pytest.fixture
def computed_in_full(monkeypatch):
    """Every heavy op computed: what the analysis and the surgery did before stand-ins."""
    def switch():
        monkeypatch.setattr(shape_only, "HEAVY", frozenset())
        monkeypatch.setattr(netslim.graph, "HEAVY", frozenset())
    return switch


@pytest.mark.filterwarnings("ignore:pruned channels")  # SigmoidTimesGate's, with stand-ins and without
@pytest.mark.parametrize("name", list(MODELS))
def test_analysis_and_surgery_with_stand_ins_equal_those_computed_in_full(name, computed_in_full):
    model = randomize_bn(MODELS[name](), seed=0).eval()
    with torch.no_grad():  # pruned channels carry β: the surgery measures and folds constants
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(-0.5, 1.0)
    netslim.graph.clear_cache()
    graph = netslim.trace_channels(model)
    plan = netslim.plan_pruning(model, percent=0.5, graph=graph)
    compacts = {fold: netslim.apply_plan(model, plan, graph=graph, fold_bias=fold) for fold in (True, "carrier")}
    computed_in_full()
    netslim.graph.clear_cache()
    full = netslim.trace_channels(model)
    assert (full.parent, full.fixed, full.scored, full.gated, full.notes) == \
        (graph.parent, graph.fixed, graph.scored, graph.gated, graph.notes)
    assert full.layers == graph.layers
    for fold, compact in compacts.items():
        expected = netslim.apply_plan(model, plan, graph=full, fold_bias=fold).state_dict()
        got = compact.state_dict()
        assert list(got) == list(expected)
        for key in got:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=f"{name} {fold} {key}")

"""Exact surgery on every common CNN topology: the compact model equals the masked one, prunes again."""

import copy
import fnmatch

import pytest
import torch
from torch import nn

import netslim
from netslim import GraphError, apply_plan, count_params, masked_model, plan_pruning, trace_channels

from . import topologies
from .conftest import randomize_bn

NAMES = list(topologies.FIXTURES)  # every fixture has prunable channels
_cache: dict[str, nn.Module] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: threads only add overhead (and stall when the machine is busy)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(name: str) -> nn.Module:
    if name not in _cache:
        _cache[name] = randomize_bn(topologies.create(name), seed=0).eval()
    return _cache[name]


def _outputs(y) -> list[torch.Tensor]:
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, dict):
        return [y[k] for k in sorted(y)]
    return [t for item in y for t in _outputs(item)]


def _inputs(input_size) -> torch.Tensor:
    """Noise with a different scale and offset per sample: global statistics (SE gates) differ too."""
    extra = (1,) * len(input_size)
    return torch.randn(3, *input_size) * (0.5 + 2 * torch.rand(3, *extra)) + torch.randn(3, *extra)


def _assert_equivalent(ref: nn.Module, small: nn.Module, input_size) -> None:
    x = _inputs(input_size)
    with torch.no_grad():
        expected, got = _outputs(ref.eval()(x)), _outputs(small.eval()(x))
    assert len(expected) == len(got)
    for e, g in zip(expected, got, strict=True):
        assert g.shape == e.shape
        assert (e - g).abs().max() <= 1e-4 * e.abs().max() + 1e-6


def _no_empty_weights(model: nn.Module) -> None:
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        assert not (isinstance(w, torch.Tensor) and w.numel() == 0), name


@pytest.mark.filterwarnings("error:pruned channels")  # surgery's warning that folding was inexact
@pytest.mark.parametrize("percent", [0.0, 0.3, 0.7])
@pytest.mark.parametrize("name", NAMES)
def test_compact_equals_masked(name, percent):
    model = _model(name)
    plan = plan_pruning(model, percent=percent)
    for fold in (True, False, "carrier"):
        small = apply_plan(model, plan, fold_bias=fold)
        _assert_equivalent(masked_model(model, plan, fold_bias=fold), small, model.input_size)
        _no_empty_weights(small)
        if percent == 0.7:
            assert plan.pruned_channels > 0
            assert count_params(small) < count_params(model)
        elif percent == 0.0:
            assert count_params(small) == count_params(model)
    if percent == 0.7:  # the compact model is an ordinary model again: it traces and prunes exactly
        trace_channels(small)
        again = randomize_bn(small, seed=1)
        plan2 = plan_pruning(again, percent=0.3)
        second = apply_plan(again, plan2)
        _assert_equivalent(masked_model(again, plan2), second, model.input_size)
        _no_empty_weights(second)
        assert count_params(second) < count_params(again)


# -- coupling --

def _kept(plan, path):
    return set(plan.kept[path])


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_post_activation_residual_groups_keep_the_same_channels(name):
    model = _model(name)
    plan = plan_pruning(model, percent=0.5)
    stages = [m for n, m in model.named_children() if n.startswith("layer")]
    groups = []
    for s, stage in enumerate(stages):
        prefix = f"layer{s + 1}"
        paths = [f"{prefix}.{i}.bn2" for i in range(len(stage))]
        paths.append("bn1" if s == 0 else f"{prefix}.0.downsample.1")
        groups.append(paths)
        kept = [_kept(plan, p) for p in paths]
        assert all(k == kept[0] for k in kept), paths
    assert any(len(_kept(plan, g[0])) < model.get_submodule(g[0]).num_features for g in groups)
    small = apply_plan(model, plan)
    _assert_equivalent(masked_model(model, plan), small, model.input_size)
    for paths in groups:  # the residual stream is physically narrower, and the same width everywhere
        widths = {small.get_submodule(p).num_features for p in paths}
        assert widths == {len(_kept(plan, paths[0]))}


def test_bare_projection_shortcut_keeps_its_residual_group():
    """A shortcut conv without BN has no scaling factor: the stream it is added to cannot be pruned."""
    model = _model("resnet20_bare_projection")
    plan = plan_pruning(model, percent=0.7)
    for s, n in ((2, 32), (3, 64)):
        for i in range(3):
            assert len(plan.kept[f"layer{s}.{i}.bn2"]) == n
    assert len(plan.kept["layer1.0.bn2"]) < 16  # the first stage has identity shortcuts only
    small = apply_plan(model, plan)
    assert small.layer2[0].downsample.out_channels == 32
    assert small.layer2[0].downsample.in_channels == len(plan.kept["layer1.0.bn2"])


def test_bottleneck_residual_group():
    model = _model("resnet50")
    plan = plan_pruning(model, percent=0.5)
    for s in range(1, 5):
        paths = [f"layer{s}.0.downsample.1", f"layer{s}.0.bn3", f"layer{s}.1.bn3"]
        assert len({tuple(plan.kept[p]) for p in paths}) == 1


def test_mobilenet_depthwise_follows_its_expansion():
    model = _model("mobilenetv2")
    plan = plan_pruning(model, percent=0.5)
    block = "features.3.conv"  # expand (conv_bn), depthwise (conv_bn), project conv, BN
    assert plan.kept[f"{block}.0.1"] == plan.kept[f"{block}.1.1"]
    small = apply_plan(model, plan)
    dw = small.get_submodule(f"{block}.1.0")
    n = len(plan.kept[f"{block}.0.1"])
    assert dw.groups == dw.in_channels == dw.out_channels == n
    assert small.get_submodule(f"{block}.2").in_channels == n
    # the linear-bottleneck residual stream: block 3 adds onto block 2's output
    assert plan.kept["features.2.conv.3"] == plan.kept["features.3.conv.3"]


@pytest.mark.parametrize("name", ["senet", "se_on_branch"])
def test_se_gate_expansion_is_narrowed_with_the_features(name):
    model = _model(name)
    plan = plan_pruning(model, percent=0.5)
    small = apply_plan(model, plan)
    _assert_equivalent(masked_model(model, plan), small, model.input_size)
    if name == "se_on_branch":
        n = len(plan.kept["expand.1"])
        assert n < 32
        assert small.se.fc2.out_channels == small.se.fc1.in_channels == n
        assert small.project[0].in_channels == n
    else:
        n1 = len(plan.kept["block1.conv2.1"])
        assert n1 == len(plan.kept["stem.1"]) < 16  # SE-scaled residual: same group as the stem
        assert small.block1.se.fc2.out_channels == small.block1.se.fc1.in_channels == n1
        n2 = len(plan.kept["block2.conv2.1"])
        assert small.block2.se.fc[2].out_features == small.block2.se.fc[0].in_features == n2


def test_two_branches_and_concat_map_slices_to_their_producers():
    model = _model("two_branch")
    plan = plan_pruning(model, percent=0.5)
    assert plan.kept["a.1"] == plan.kept["b.1"] != plan.kept["stem.1"]  # added: one channel set
    small = apply_plan(model, plan)
    _assert_equivalent(masked_model(model, plan), small, model.input_size)
    n_s, n_c, n_d = (len(plan.kept[p]) for p in ("a.1", "c.1", "d.1"))
    assert small.fuse[0].in_channels == n_s + n_c + n_d < 36
    # the slice of the fused conv's weight for each producer comes from that producer's kept channels
    offsets = {"a.1": 0, "c.1": 16, "d.1": 24}
    cols = [offsets[p] + k for p in ("a.1", "c.1", "d.1") for k in plan.kept[p]]
    rows = list(plan.kept["fuse.1"])
    expected = model.fuse[0].weight[rows][:, cols]
    assert torch.equal(small.fuse[0].weight, expected)


def test_split_chunk_and_upsample_concat():
    model = copy.deepcopy(_model("c2f_neck"))
    with torch.no_grad():  # channel 1 of c2's chunked halves (and of the bottleneck added onto the second)
        model.c2.cv1.bn.weight[[1, 9]] *= 1e-3
        model.c2.m[0].cv2.bn.weight[1] *= 1e-3
    plan = plan_pruning(model, percent=0.5)
    small = apply_plan(model, plan)
    _assert_equivalent(masked_model(model, plan), small, model.input_size)
    for c2f in ("c2", "c3"):
        cv1 = plan.kept[f"{c2f}.cv1.bn"]
        half = model.get_submodule(c2f).c
        y0 = [k for k in cv1 if k < half]
        y1 = [k - half for k in cv1 if k >= half]
        # the shortcut adds the bottleneck output to the second half of cv1: the same channels
        assert list(plan.kept[f"{c2f}.m.0.cv2.bn"]) == y1
        n = len(y0) + len(y1) + sum(len(plan.kept[f"{c2f}.m.{i}.cv2.bn"]) for i in range(len(model.get_submodule(
            c2f).m)))
        assert small.get_submodule(f"{c2f}.cv2.conv").in_channels == n
    assert small.up.cv1.conv.in_channels == len(plan.kept["c3.cv2.bn"]) + len(plan.kept["c2.cv2.bn"])
    assert small.head.out_channels == model.head.out_channels
    # chunk(2) cuts in the middle of any width: both halves keep the same channels, and stay equal
    kept = plan.kept["c2.cv1.bn"]
    assert [k for k in kept if k < 8] == [k - 8 for k in kept if k >= 8] and 1 not in kept and 9 not in kept
    # torch.split(x, [c, c]) has its sizes in the code: that tensor keeps its width
    assert len(plan.kept["c3.cv1.bn"]) == 24 and len(plan.kept["c3.m.0.cv2.bn"]) == 12
    assert any("split" in note for note in trace_channels(model).notes)


def test_spp_parallel_pools_share_the_pooled_channels():
    model = _model("spp")
    plan = plan_pruning(model, percent=0.5)
    small = apply_plan(model, plan)
    n = len(plan.kept["spp.cv1.bn"])
    assert n < 16
    assert small.spp.cv2.conv.in_channels == 4 * n


def test_detector_heads_keep_their_outputs():
    model = _model("tiny_yolo")
    plan = plan_pruning(model, percent=0.7)
    small = apply_plan(model, plan)
    for h, src in (("head3", "n2.cv2.bn"), ("head4", "n3.cv2.bn"), ("head5", "n4.cv2.bn")):
        assert small.get_submodule(h).out_channels == model.get_submodule(h).out_channels
        assert small.get_submodule(h).in_channels == len(plan.kept[src])
    x = torch.randn(2, *model.input_size)
    with torch.no_grad():
        assert {k: v.shape for k, v in small(x).items()} == {k: v.shape for k, v in model(x).items()}


class _GateAddedBack(nn.Module):
    """y * g + g: the sum is not zero where y is, so y's channels cannot go (unlike y * g)."""

    def __init__(self, add_back: bool) -> None:
        super().__init__()
        self.input_size = (3, 16, 16)
        self.add_back = add_back
        self.stem = topologies.conv_bn(3, 8)
        self.gate = nn.Conv2d(8, 8, 1)
        self.out = topologies.conv_bn(8, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.stem(x)
        g = torch.sigmoid(self.gate(y))
        return self.head(self.out(y * g + g) if self.add_back else self.out(y * g))


@pytest.mark.parametrize("add_back", [True, False])
def test_a_gate_is_prunable_only_where_it_multiplies(add_back):
    model = randomize_bn(_GateAddedBack(add_back)).eval()
    plan = plan_pruning(model, percent=0.5)
    assert (len(plan.kept["stem.1"]) == 8) == add_back
    for fold in (True, False, "carrier"):
        small = apply_plan(model, plan, fold_bias=fold)
        _assert_equivalent(masked_model(model, plan, fold_bias=fold), small, model.input_size)
        assert small.gate.out_channels == len(plan.kept["stem.1"])


def test_ghost_channel_slice():
    model = _model("ghostnet")
    plan = plan_pruning(model, percent=0.7)
    # ghost1: cat then out[:, :16] of 16 channels, a no-op slice: the depthwise "cheap" half follows
    # its primary channels; ghost2: out[:, :15] of 16, bounds in the code: its channels stay
    n = len(plan.kept["ghost1.primary_conv.1"])
    assert n < 8 and plan.kept["ghost1.primary_conv.1"] == plan.kept["ghost1.cheap_operation.1"]
    assert len(plan.kept["ghost2.primary_conv.1"]) == len(plan.kept["ghost2.cheap_operation.1"]) == 8
    small = apply_plan(model, plan)
    assert small.ghost2.primary_conv[0].in_channels == 2 * n
    assert small.head[0].in_channels == 15
    _assert_equivalent(masked_model(model, plan), small, model.input_size)


def test_unet_transposed_convs_and_skips():
    model = _model("unet")
    plan = plan_pruning(model, percent=0.5)
    small = apply_plan(model, plan)
    # up2 has no BN: its output channels stay; up1 is followed by a BN and narrows with it
    assert small.up2.out_channels == 16
    assert small.up2.in_channels == len(plan.kept["mid.4"])
    assert small.up1[0].out_channels == len(plan.kept["up1.1"]) < 8
    assert small.dec2[0].in_channels == 16 + len(plan.kept["enc2.4"])
    assert small.dec1[0].in_channels == len(plan.kept["enc1.4"]) + len(plan.kept["up1.1"])
    assert small.out.out_channels == 3


def test_conv1d_and_batchnorm1d():
    model = _model("conv1d")
    plan = plan_pruning(model, percent=0.5)
    small = apply_plan(model, plan)
    assert plan.kept["conv1.1"] == plan.kept["conv2.4"]  # residual
    assert isinstance(small.conv1[1], nn.BatchNorm1d) and small.conv1[0].out_channels < 16


def test_grouped_conv_loses_whole_groups_and_dilation_is_pruned():
    model = copy.deepcopy(_model("grouped_dilated"))
    with torch.no_grad():  # the second group's inputs (stem channels 8..15) rank below everything else
        model.stem[1].weight[8:] = torch.linspace(1e-4, 1e-3, 8)
    graph = trace_channels(model)
    assert not graph.notes
    plan = plan_pruning(model, percent=0.3, graph=graph)
    small = apply_plan(model, plan, graph=graph)
    # a group reads its own 8 inputs and writes its own 8 outputs: removed whole, as one channel of the plan
    assert plan.kept["stem.1"] == tuple(range(8))
    grouped = small.grouped[0]
    assert (grouped.groups, grouped.in_channels, grouped.out_channels) == (1, 8, 8)
    assert torch.equal(grouped.weight, model.grouped[0].weight[:8])
    # its BN reads the conv's output and selects single channels from it (a selection BN)
    assert small.grouped[1].num_features == len(plan.kept["grouped.1"]) < 16
    assert small.mid[0].in_channels == len(plan.kept["grouped.1"])
    assert small.dilated[0].dilation == (2, 2) and small.dilated[0].out_channels == len(plan.kept["dilated.1"]) < 24
    for fold in (True, False, "carrier"):
        _assert_equivalent(masked_model(model, plan, graph=graph, fold_bias=fold),
                           apply_plan(model, plan, graph=graph, fold_bias=fold), model.input_size)


def test_flatten_into_linear_removes_whole_spatial_groups():
    model = _model("flatten_linear")
    plan = plan_pruning(model, percent=0.5)
    small = apply_plan(model, plan)
    n = len(plan.kept["features.2.1"])
    assert n < 16
    assert small.classifier[0].in_features == 16 * n
    cols = [16 * c + s for c in plan.kept["features.2.1"] for s in range(16)]
    rows = list(plan.kept["classifier.1"])
    assert torch.equal(small.classifier[0].weight, model.classifier[0].weight[rows][:, cols])


# -- refusals and fixed modules --

def test_model_without_batchnorm_is_refused():
    with pytest.raises(GraphError, match="BatchNorm"):
        plan_pruning(topologies.NoBN(), percent=0.5)


def test_data_dependent_control_flow_is_refused_clearly():
    with pytest.raises(GraphError, match="control flow"):
        trace_channels(topologies.DataDependent())


def test_fixed_patterns_keep_those_modules_unchanged():
    model = _model("tiny_yolo")
    # without fixed=..., the heads read narrowed features
    assert apply_plan(model, plan_pruning(model, percent=0.7)).head3.in_channels < 24
    plan = plan_pruning(model, percent=0.7, fixed=["head*"])
    small = apply_plan(model, plan, fixed=["head*"])
    for name, m in model.named_modules():
        if fnmatch.fnmatch(name, "head*"):
            assert torch.equal(small.get_submodule(name).weight, m.weight)
            assert small.get_submodule(name).in_channels == m.in_channels
    _assert_equivalent(masked_model(model, plan, fixed=["head*"]), small, model.input_size)
    assert count_params(small) < count_params(model)


def test_every_fixture_declares_its_input_size():
    for name in NAMES:
        model = _model(name)
        assert netslim.metrics.input_size_of(model) == tuple(model.input_size)


def test_apply_plan_reuses_the_plans_fixed_patterns_and_input_shape():
    model = _model("tiny_yolo")
    x = torch.randn(1, *model.input_size)
    plan = plan_pruning(model, percent=0.7, fixed=["head*"], example_input=x)
    plan = type(plan).from_dict(plan.to_dict())  # as if read from plan.json
    small = apply_plan(model, plan)  # no fixed=, no example_input= repeated
    assert small.head3.in_channels == model.head3.in_channels
    _assert_equivalent(masked_model(model, plan), small, model.input_size)

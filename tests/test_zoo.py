"""netslim on model definitions nobody here wrote: timm, torchvision, Ultralytics, segmentation-models-pytorch.

Random weights (nothing is downloaded), BN scales, shifts and statistics randomized from a seeded
generator so that pruning half of the channels removes something real. For every model: fewer
parameters, the compact model equal to the masked one (pruned γ zeroed) in eval mode on the example
input *and* on another input size and batch (the compact model is a model, not a replay of one
input), every BN still of its own class, the original left as it was. Each model is skipped where its
package is not installed. Ultralytics keeps its own console and network out (YOLO_OFFLINE).
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils import _pytree as pytree

import netslim
from netslim.layers import SelectBatchNorm, selection_of

from .conftest import randomize_bn

os.environ.setdefault("YOLO_OFFLINE", "1")

TOLERANCE = 1e-4  # relative: max |compact - masked| / max |masked|, per output tensor
PERCENT = 0.5


@dataclass(frozen=True)
class Case:
    package: str  # importorskip'ed
    size: int  # example input: batch 1, 3 x size x size
    other: int  # a second input size (batch 2): shape-dependent code (padding, anchors) runs anew


# Second sizes: multiples of 32 where the model concatenates upsampled features (U-Net, FPN, YOLO);
# odd for tf_efficientnet_b0, whose Conv2dSame pads by the input size (asymmetric at odd sizes).
CASES = {
    "timm/efficientnet_b0": Case("timm", 128, 96),
    "timm/mobilenetv2_100": Case("timm", 128, 96),
    "timm/densenet121": Case("timm", 96, 128),
    "timm/regnety_008": Case("timm", 128, 96),
    "timm/dpn68": Case("timm", 96, 128),
    "timm/cspdarknet53": Case("timm", 96, 128),
    "timm/repvgg_a0": Case("timm", 128, 96),
    "timm/tf_efficientnet_b0": Case("timm", 128, 113),
    "timm/hgnetv2_b0": Case("timm", 96, 64),
    "timm/levit_128s": Case("timm", 224, 224),  # attention biases fixed at 14x14 tokens: one size, two batches
    "torchvision/resnet18": Case("torchvision", 128, 96),
    "torchvision/mobilenet_v3_small": Case("torchvision", 128, 96),
    "ultralytics/yolov8n.yaml": Case("ultralytics", 128, 96),
    "ultralytics/yolo11n.yaml": Case("ultralytics", 128, 96),
    "ultralytics/yolov8n-seg.yaml": Case("ultralytics", 128, 96),
    "smp/FPN/efficientnet-b0": Case("segmentation_models_pytorch", 128, 96),
    "smp/Unet/resnet34": Case("segmentation_models_pytorch", 96, 128),
}
TIMM = [n for n in CASES if n.startswith("timm/")]
ULTRALYTICS = [n for n in CASES if n.startswith("ultralytics/")]


def _zoo():
    """benchmarks/zoo.py, imported as the benchmark runs it (its folder on the path for ``common``)."""
    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        import zoo
    finally:
        sys.path.remove(str(bench))
    return zoo


def build(name: str) -> nn.Module:
    """A model with random weights from its library's own constructor (the benchmark's ``build``)."""
    return _zoo().build(name)


def leaves(out) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def relative_errors(out, ref) -> list[float]:
    a, b = leaves(out), leaves(ref)
    assert len(a) == len(b) and a, f"{len(a)} output tensors against {len(b)}"
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape, f"output shape {tuple(x.shape)} against {tuple(y.shape)}"
    return [float((x - y).abs().max() / y.abs().max().clamp_min(1e-12)) for x, y in zip(a, b, strict=True)]


def fingerprint(model: nn.Module) -> dict[str, tuple[float, float]]:
    return {k: (float(v.double().sum()), float(v.double().abs().sum())) for k, v in model.state_dict().items()}


@dataclass
class Pruned:
    name: str
    original: nn.Module
    compact: nn.Module
    plan: netslim.PruningPlan
    inputs: dict[str, torch.Tensor]  # "example", "other"
    errors: dict[str, list[float]]  # per input: relative error of every output tensor against the masked model
    carried: dict[str, list[float]]  # the same with β carried (fold_bias="carrier") against its masked model
    before: dict[str, tuple[float, float]]  # the original's state before pruning


@pytest.fixture(scope="module", params=list(CASES))
def pruned(request) -> Pruned:
    """One model, pruned once (module scope: pytest runs every test of a model before building the next)."""
    name, case = request.param, CASES[request.param]
    pytest.importorskip(case.package)
    torch.manual_seed(0)
    model = randomize_bn(build(name), seed=1).eval()
    g = torch.Generator().manual_seed(2)
    inputs = {"example": torch.randn(1, 3, case.size, case.size, generator=g),
              "other": torch.randn(2, 3, case.other, case.other, generator=g)}
    before = fingerprint(model)
    graph = netslim.trace_channels(model, inputs["example"])
    plan = netslim.plan_pruning(model, PERCENT, graph=graph)
    compact = netslim.apply_plan(model, plan, graph=graph).eval()
    masked = netslim.masked_model(model, plan, graph=graph).eval()
    carrying = netslim.apply_plan(model, plan, graph=graph, fold_bias="carrier").eval()
    keeping_beta = netslim.masked_model(model, plan, graph=graph, fold_bias="carrier").eval()
    with torch.no_grad():
        errors = {k: relative_errors(compact(x), masked(x)) for k, x in inputs.items()}
        carried = {k: relative_errors(carrying(x), keeping_beta(x)) for k, x in inputs.items()}
    return Pruned(name, model, compact, plan, inputs, errors, carried, before)


def test_compact_equals_masked_on_two_input_sizes(pruned):
    assert pruned.plan.pruned_channels > 0
    for key, errs in pruned.errors.items():
        shape = tuple(pruned.inputs[key].shape)
        assert max(errs) <= TOLERANCE, f"{pruned.name} at input {shape}: relative errors {errs}"


def test_carried_beta_equals_its_masked_model_on_two_input_sizes(pruned):
    """β of pruned channels (randomized, half of them positive) carried through every zero-padded conv."""
    for key, errs in pruned.carried.items():
        shape = tuple(pruned.inputs[key].shape)
        assert max(errs) <= TOLERANCE, f"{pruned.name} at input {shape}: relative errors {errs}"


def test_fewer_parameters(pruned):
    assert netslim.count_params(pruned.compact) < netslim.count_params(pruned.original)


def test_original_left_as_it_was(pruned):
    assert fingerprint(pruned.original) == pruned.before


def test_batchnorms_keep_their_class(pruned):
    """A BN subclass stays itself (selection by a hook); a plain BN may become a selection BN (its subclass)."""
    narrowed = 0
    for path, old in pruned.original.named_modules():
        if not isinstance(old, _BatchNorm):
            continue
        new = pruned.compact.get_submodule(path)
        if isinstance(new, SelectBatchNorm) and not isinstance(old, SelectBatchNorm):
            assert type(old) in (nn.BatchNorm2d, nn.BatchNorm1d), f"{path}: {type(old).__name__} became a selection BN"
        else:
            assert type(new) is type(old), f"{path}: {type(old).__name__} became {type(new).__name__}"
        narrowed += new.num_features < old.num_features
    assert narrowed > 0


@pytest.mark.parametrize("pruned", TIMM, indirect=True)
def test_timm_batchnorm_act_still_applies_its_activation(pruned):
    """Every narrowed ``BatchNormAct2d`` computes act(drop(BN(x[:, selection]))) with its own act layer."""
    from timm.layers import BatchNormAct2d

    checked, selecting = 0, 0
    g = torch.Generator().manual_seed(3)
    for path, new in pruned.compact.named_modules():
        old = pruned.original.get_submodule(path)
        if not isinstance(old, BatchNormAct2d) or new.num_features == old.num_features:
            continue
        assert type(new.act) is type(old.act), path
        index = selection_of(new)
        width = new.num_features if index is None else new.in_channels
        x = torch.randn(2, width, 5, 5, generator=g)
        picked = x if index is None else x.index_select(1, index)
        expected = new.act(nn.functional.batch_norm(picked, new.running_mean, new.running_var, new.weight,
                                                    new.bias, False, 0.0, new.eps))
        with torch.no_grad():
            torch.testing.assert_close(new.eval()(x), expected, rtol=1e-5, atol=1e-6)
        checked += 1
        selecting += index is not None
    if any(isinstance(m, BatchNormAct2d) for m in pruned.original.modules()):
        assert checked > 0
    if pruned.name == "timm/densenet121":  # pre-activation: BNs reading the concatenated features select
        assert selecting > 0


@pytest.mark.parametrize("pruned", ["timm/hgnetv2_b0"], indirect=True)
def test_hgnetv2_scalar_learnable_affine_does_not_fix_channels(pruned):
    """PP-HGNetV2's LearnableAffineBlock (``scale * x + bias``, one-element parameters) follows conv-BN-ReLU:
    those convs narrow, and the affine keeps its two scalars."""
    from timm.models.hgnet import LearnableAffineBlock

    narrowed = 0
    for path, old in pruned.original.named_modules():
        if isinstance(getattr(old, "lab", None), LearnableAffineBlock):
            new = pruned.compact.get_submodule(path)
            assert new.lab.scale.shape == new.lab.bias.shape == (1,)
            narrowed += new.conv.out_channels < old.conv.out_channels
    assert narrowed >= 10
    assert not netslim.trace_channels(pruned.original, pruned.inputs["example"]).notes


@pytest.mark.parametrize("pruned", ["timm/levit_128s"], indirect=True)
def test_levit_token_linears_narrow_with_the_bn_over_their_flattened_tokens(pruned):
    """LeViT's LinearNorm: a Linear over tokens (B, N, C), its BN over ``flatten(0, 1)`` and ``reshape_as``
    back. The BN owns the Linear: each MLP's hidden Linear narrows with its BN, the next reads what is kept."""
    from timm.models.levit import LevitMlp

    narrowed = 0
    for path, old in pruned.original.named_modules():
        if isinstance(old, LevitMlp):
            new = pruned.compact.get_submodule(path)
            hidden = new.ln1.linear.out_features
            assert hidden == new.ln1.bn.num_features == new.ln2.linear.in_features, path
            narrowed += hidden < old.ln1.linear.out_features
    assert narrowed >= 8


@pytest.mark.parametrize("pruned", ["ultralytics/yolo11n.yaml"], indirect=True)
def test_yolo11_attention_keeps_its_channels(pruned):
    """C2PSA's attention views qkv's channels as (heads, dims): qkv, pe and proj keep every channel."""
    from ultralytics.nn.modules.block import Attention

    found = 0
    for path, old in pruned.original.named_modules():
        if isinstance(old, Attention):
            new = pruned.compact.get_submodule(path)
            for part in ("qkv", "pe", "proj"):
                a, b = getattr(old, part).conv, getattr(new, part).conv
                assert (b.in_channels, b.out_channels) == (a.in_channels, a.out_channels), f"{path}.{part}"
            found += 1
    assert found > 0


@pytest.mark.parametrize("pruned", ULTRALYTICS, indirect=True)
def test_ultralytics_fuse_runs_on_the_compact_model(pruned):
    """Ultralytics' own ``fuse()`` (conv + BN folded, forward_fuse) accepts the compact model, same outputs."""
    fused = copy.deepcopy(pruned.compact).fuse(verbose=False).eval()
    assert sum(isinstance(m, _BatchNorm) for m in fused.modules()) < sum(
        isinstance(m, _BatchNorm) for m in pruned.compact.modules())
    with torch.no_grad():
        for x in pruned.inputs.values():
            errs = relative_errors(fused(x), pruned.compact(x))
            assert max(errs) <= TOLERANCE, errs


@pytest.mark.parametrize("name", ["timm/regnetx_002", "torchvision/resnext50_32x4d"])
def test_grouped_convs_lose_whole_groups_exactly(name):
    """γ = β = 0 on the inputs of the last group of every grouped conv (its own conv-BN in front): removing
    exactly the zero channels removes those groups, in and out, and every output stays as it was."""
    pytest.importorskip(name.partition("/")[0])
    model = randomize_bn(build(name), seed=1).eval()
    blocks = {}
    with torch.no_grad():
        for path, block in model.named_modules():
            first, grouped = _conv_bn(block, 1), _conv_bn(block, 2)
            if grouped is not None and first is not None and grouped[0].groups > 1:
                per_group = grouped[0].in_channels // grouped[0].groups
                first[1].weight[-per_group:] = 0
                first[1].bias[-per_group:] = 0
                blocks[path] = grouped[0].groups
    assert len(blocks) >= 4
    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(1, 3, 64, 64, generator=g), torch.randn(2, 3, 96, 96, generator=g)]
    graph = netslim.trace_channels(model, inputs[0])
    scores = netslim.plan.channel_scores(model, graph)
    zeros = sum(v == 0 for v in scores.values())
    assert zeros == len(blocks)  # each group is one channel of the plan
    plan = netslim.plan_pruning(model, (zeros + 0.5) / len(scores), graph=graph)
    compact = netslim.apply_plan(model, plan, graph=graph).eval()
    for path, groups in blocks.items():
        assert _conv_bn(compact.get_submodule(path), 2)[0].groups == groups - 1, path
    assert netslim.count_params(compact) < netslim.count_params(model)
    with torch.no_grad():
        for x in inputs:
            assert max(relative_errors(compact(x), model(x))) <= TOLERANCE
    # a checkpoint's description rebuilds the narrower grouped convs (prefix groups of the right count)
    rebuilt = netslim.checkpoint.build_model(netslim.checkpoint.describe(compact, name.replace("/", ":")))
    rebuilt.load_state_dict(compact.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(inputs[0]), compact(inputs[0]), rtol=0, atol=0)


def test_smp_pspnet_names_the_encoder_stages_it_never_runs():
    """smp's PSPNet builds a whole ResNet-18 and runs it to ``encoder_depth=3``: layer3 and layer4 (93% of the
    parameters) never run, so a plan over the rest cannot reduce the total much. The analysis says so; of the
    layers that run, every BN channel is prunable (the pyramid branches concatenated with their input
    included) and the zero channels of the zoo protocol take about 40% of those layers' parameters."""
    pytest.importorskip("segmentation_models_pytorch")
    zoo = _zoo()
    model = zoo.zero_channels(randomize_bn(build("smp/PSPNet/resnet18"), seed=1).eval(), 0.4, seed=2)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    graph = netslim.trace_channels(model, x)
    assert {p.split(".")[1] for p in graph.unused} == {"layer3", "layer4"}
    assert len(graph.notes) == 1 and "never ran" in graph.notes[0] and "(93%)" in graph.notes[0], graph.notes
    prunable = graph.prunable_roots()
    assert all(r in prunable for use in graph.bns.values() for r in graph.roots(use.out_ids))
    scores = netslim.plan.channel_scores(model, graph)
    zeros = sum(v == 0 for v in scores.values())
    compact = netslim.apply_plan(model, netslim.plan_pruning(model, (zeros + 0.5) / len(scores), graph=graph),
                                 graph=graph).eval()
    unused = sum(p.numel() for path in graph.unused for p in model.get_submodule(path).parameters())
    ran = netslim.count_params(model) - unused
    assert (ran - (netslim.count_params(compact) - unused)) / ran > 0.3
    with torch.no_grad():
        assert max(relative_errors(compact(x), model(x))) <= TOLERANCE


def _conv_bn(block: nn.Module, k: int) -> tuple[nn.Module, nn.Module] | None:
    """The k-th conv of a bottleneck and its BN: timm's ``conv{k}.conv``/``conv{k}.bn``, torchvision's
    ``conv{k}``/``bn{k}``."""
    conv, bn = getattr(block, f"conv{k}", None), getattr(block, f"bn{k}", None)
    if conv is not None and hasattr(conv, "conv") and hasattr(conv, "bn"):
        conv, bn = conv.conv, conv.bn
    return (conv, bn) if isinstance(conv, nn.Conv2d) and isinstance(bn, _BatchNorm) else None


def test_timm_convnext_without_batchnorm_is_refused_in_one_line():
    timm = pytest.importorskip("timm")
    model = timm.create_model("convnext_atto", pretrained=False).eval()
    with pytest.raises(netslim.GraphError) as info:
        netslim.plan_pruning(model, PERCENT, example_input=torch.randn(1, 3, 64, 64))
    message = str(info.value)
    assert "\n" not in message and "BatchNorm" in message, message


def test_zoo_benchmark_smoke(tmp_path):
    """benchmarks/zoo.py in smoke mode: one torchvision model, 40% of every BN's channels zeroed, only those
    removed: the compact model equals the original within 1e-4 at two input sizes, with fewer parameters."""
    pytest.importorskip("torchvision")
    pytest.importorskip("torch_pruning")
    zoo = _zoo()
    rec = zoo.main(["--smoke", "--out", str(tmp_path)])
    assert (tmp_path / "zoo_smoke.json").exists()
    rows = rec["results"]["models"]
    assert rows and all(set(r) >= {"model", "netslim", "torch_pruning"} for r in rows)
    ours = rows[0]["netslim"]
    assert ours["status"] == "ok", ours
    assert zoo.exact(ours), ours
    assert 0 < ours["channels_pruned"] == ours["channels_zero"] < ours["channels_prunable"]
    assert set(ours["errors"]) == {"example", "other"}
    assert rows[0]["torch_pruning"]["status"] in {"ok", "failed", "timeout", "crashed"}
    assert "| torchvision/resnet18 | exact |" in zoo.markdown(rec)
    assert rec["notes"][0].startswith("netslim exact and reduced on 1/1 models with BN")


def test_zoo_zeroed_channels_carry_zero():
    """The benchmark's premise: after ``zero_channels`` a BN's chosen channels output exactly 0 in eval mode."""
    zoo = _zoo()
    bn = randomize_bn(nn.Sequential(nn.BatchNorm2d(10)), seed=1).eval()
    zoo.zero_channels(bn, 0.4, seed=0)
    zeroed = (bn[0].weight == 0).nonzero().flatten()
    assert len(zeroed) == 4 and bool((bn[0].bias[zeroed] == 0).all())
    with torch.no_grad():
        out = bn(torch.randn(2, 10, 3, 3))
    assert bool((out[:, zeroed] == 0).all())


def test_analysis_and_surgery_skip_the_multiply_adds_of_a_forward_pass():
    """What makes analysis + plan + surgery fast (benchmarks/prune_speed.py): on torchvision's ResNet-50 at
    224 px the convolutions and the classifier run as stand-ins, so the three calls together execute under 2%
    of the FLOPs of one forward pass (they ran two: the analysis, and the surgery's measurement of constants)."""
    pytest.importorskip("torchvision")
    from torch.utils.flop_counter import FlopCounterMode

    model = randomize_bn(build("torchvision/resnet50"), seed=1).eval()
    x = torch.randn(1, 3, 224, 224)
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        model(x)
    netslim.graph.clear_cache()
    with FlopCounterMode(display=False) as pruning:
        graph = netslim.trace_channels(model, x)
        compact = netslim.apply_plan(model, netslim.plan_pruning(model, 0.3, graph=graph), graph=graph)
    assert forward.get_total_flops() > 3e9
    assert pruning.get_total_flops() < 0.02 * forward.get_total_flops()
    assert netslim.count_params(compact) < netslim.count_params(model)


def test_prune_speed_benchmark_smoke(tmp_path):
    """benchmarks/prune_speed.py in smoke mode: both tools timed interleaved on one model, both exact there."""
    pytest.importorskip("torchvision")
    pytest.importorskip("torch_pruning")
    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        import prune_speed
    finally:
        sys.path.remove(str(bench))
    rec = prune_speed.main(["--smoke", "--out", str(tmp_path)])
    row = rec["results"]["models"][0]
    assert set(row["netslim"]["stages"]) == {"analysis", "planning", "surgery", "total"}
    assert set(row["torch_pruning"]["stages"]) == {"analysis", "step", "total"}
    assert row["netslim"]["exact"] and row["netslim"]["params_ratio"] < 1
    assert row["speedup_wall"] > 0 and row["channels_pruned"] > 0
    assert "| torchvision/resnet18 (64 px) |" in prune_speed.markdown(rec)

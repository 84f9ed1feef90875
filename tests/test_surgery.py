import pytest
import torch

from netslim import (
    PruningPlan,
    SelectBatchNorm,
    apply_plan,
    count_flops,
    count_params,
    masked_model,
    models,
    plan_pruning,
)
from netslim.export import TOLERANCE

from .conftest import randomize_bn

_cache: dict[str, torch.nn.Module] = {}


def _model(name):
    if name not in _cache:
        # VGG-A at 64x64 with 256-wide FC layers: the same graph as at full size, 20x faster to copy.
        kwargs = dict(input_size=64, widths=[64, 128, 256, 256, 512, 512, 512, 512, 256, 256]) \
            if name == "vgg11a" else {}
        _cache[name] = randomize_bn(models.create(name, **kwargs)).eval()
    return _cache[name]


def _assert_equivalent(ref, small, input_size):
    x = torch.randn(3, *input_size)
    with torch.no_grad():
        expected, got = ref.eval()(x), small.eval()(x)
    assert got.shape == expected.shape
    assert (expected - got).abs().max() <= TOLERANCE * expected.abs().max() + 1e-6


def _guard_plan(model):
    """A plan that must hit the layer guard: all of one layer's scales are made the smallest."""
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    with torch.no_grad():
        saved = bn.weight.clone()
        bn.weight.mul_(1e-4)
        total = sum(m.num_features for m in model.modules() if isinstance(m, type(bn)))
        plan = plan_pruning(model, max(0.5, min(0.99, (bn.num_features + 1) / total)))
        bn.weight.copy_(saved)
    assert plan.guarded
    return plan


@pytest.mark.parametrize("name", models.names())  # registering a model puts it under this test
@pytest.mark.parametrize("percent", [0.0, 0.3, 0.7, "guard"])
def test_compact_model_equals_masked_model(name, percent):
    model = _model(name)
    plan = _guard_plan(model) if percent == "guard" else plan_pruning(model, percent)
    for fold in (True, False, "carrier"):
        small = apply_plan(model, plan, fold_bias=fold)
        _assert_equivalent(masked_model(model, plan, fold_bias=fold), small, model.input_size)
        assert type(small) is type(model)  # the same class with narrower widths
        if percent != 0.0:
            assert count_params(small) < count_params(model)
        empty = [n for n, t in [*small.named_parameters(), *small.named_buffers()] if t.numel() == 0]
        assert not empty, f"{name} at {percent} ({'folded' if fold else 'not folded'}) has empty tensors: {empty}"


def test_no_masks_remain_and_widths_are_physical():
    model = _model("vgg19")
    plan = plan_pruning(model, 0.7)
    small = apply_plan(model, plan)
    convs = [m for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in small.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == [len(k) for k in plan.kept.values()]
    assert all(b.weight.abs().min() > 0 for b in bns)  # no zeroed (masked) channel is left
    assert count_flops(small) < count_flops(model)


def test_pruned_vgg_is_the_same_class_with_a_narrower_config():
    model = _model("vgg19")
    small = apply_plan(model, plan_pruning(model, 0.7))
    widths = [m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    rebuilt = models.create("vgg19", widths=widths)
    assert type(rebuilt) is type(small)
    rebuilt.load_state_dict(small.state_dict())  # same parameter shapes
    _assert_equivalent(small, rebuilt, model.input_size)


def test_pruned_mlp_matches_paper_table3_widths():
    model = _model("mlp")
    small = apply_plan(model, plan_pruning(model, layer_percent=0.8))
    assert small.hidden[0].out_features == 100 and small.hidden[3].out_features == 60
    assert 1 - count_params(small) / count_params(model) == pytest.approx(0.844, abs=0.01)  # paper: 84.4%


def test_preactivation_resnet_uses_channel_selection_and_keeps_the_stream():
    model = _model("resnet164")
    small = apply_plan(model, plan_pruning(model, 0.6))
    assert isinstance(small.layer1[1].bn1, SelectBatchNorm)
    assert small.layer1[1].conv3.out_channels == 64  # the residual stream keeps its width
    assert small.layer1[1].bn1.in_channels == 64


def test_plan_save_load_apply_gives_the_same_model(tmp_path):
    model = _model("densenet40")
    plan = plan_pruning(model, 0.5)
    plan.save(tmp_path / "p.json")
    direct = apply_plan(model, plan)
    loaded = apply_plan(model, PruningPlan.load(tmp_path / "p.json"))
    a, b = direct.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_multi_pass_prunes_a_compact_model_again_exactly():
    model = _model("resnet164")
    first = apply_plan(model, plan_pruning(model, 0.4))
    randomize_bn(first, seed=3)
    plan = plan_pruning(first, 0.4, max_layer_fraction=0.5)
    second = apply_plan(first, plan)
    _assert_equivalent(masked_model(first, plan), second, model.input_size)
    assert count_params(second) < count_params(first)


def test_folding_beta_keeps_pruned_output_closer_to_the_original():
    model = _model("vgg19")
    plan = plan_pruning(model, 0.5)
    x = torch.randn(8, *model.input_size)
    with torch.no_grad():
        original = model(x)
        folded = apply_plan(model, plan, fold_bias=True).eval()(x)
        dropped = apply_plan(model, plan, fold_bias=False).eval()(x)
    assert (folded - original).abs().mean() < (dropped - original).abs().mean()


def test_plan_that_does_not_fit_the_model():
    plan = plan_pruning(_model("vgg19"), 0.5)
    with pytest.raises(ValueError, match="does not fit"):
        apply_plan(models.create("vgg16"), plan)
    with pytest.raises(ValueError, match="does not fit"):
        apply_plan(models.create("vgg19", widths=[32] * 16), plan)

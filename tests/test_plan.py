import math

import pytest
import torch

from netslim import PruningPlan, models, plan_pruning

from .conftest import randomize_bn


def _vgg(seed=0):
    return randomize_bn(models.create("vgg11", widths=[8, 16, 16, 16, 32, 32, 32, 32]), seed)


def _gammas(model):
    return {n: m.weight.detach().abs() for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


@pytest.mark.parametrize("percent", [0.0, 0.1, 0.5, 0.7, 0.99])
def test_prunes_exactly_floor_n_times_p_smallest_scales(percent):
    model = _vgg()
    plan = plan_pruning(model, percent)
    n = sum(len(g) for g in _gammas(model).values())
    assert plan.total_channels == n
    assert plan.pruned_channels == math.floor(n * percent) or plan.guarded
    gammas = _gammas(model)
    dropped = {p: g[[i for i in range(len(g)) if i not in plan.kept[p]]] for p, g in gammas.items()}
    kept = {p: g[list(plan.kept[p])] for p, g in gammas.items()}
    pruned = torch.cat(list(dropped.values()))
    free = [p for p in gammas if p not in plan.guarded]  # layers where only the global threshold decided
    free_kept = torch.cat([kept[p] for p in free]) if free else torch.empty(0)
    if len(pruned) and len(free_kept):  # the smallest |γ| went, wherever no guard stepped in
        assert pruned.max() <= free_kept.min()
    if not plan.guarded and len(pruned) and len(free_kept):
        assert plan.threshold == pytest.approx(free_kept.min().item())
    if plan.guarded:  # guards only keep more: fewer pruned than asked, and a guarded layer keeps its largest
        assert percent >= 0.7 and plan.pruned_channels < math.floor(n * percent)
        for path in plan.guarded:
            assert plan.layers[path].guard == "min_channels" and len(plan.kept[path]) == 1, path
            assert len(dropped[path]) == 0 or dropped[path].max() <= kept[path].min(), path
    assert all(len(k) >= 1 for k in plan.kept.values())


def test_ties_are_broken_deterministically_without_over_pruning():
    model = _vgg()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(0.5)  # every channel ties: a '<=' threshold would prune them all
    plan = plan_pruning(model, 0.5)
    assert plan.pruned_channels == math.floor(plan.total_channels * 0.5)
    assert plan.kept == plan_pruning(model, 0.5).kept


def test_min_channels_guard_never_empties_a_layer_and_says_which():
    model = _vgg()
    with torch.no_grad():
        model.features[1].weight.mul_(1e-4)  # the first layer is all tiny: a global threshold empties it
    plan = plan_pruning(model, 0.3)
    assert len(plan.kept["features.1"]) == 1
    assert plan.layers["features.1"].guard == "min_channels"
    assert "features.1" in plan.guarded
    assert plan.pruned_channels < math.floor(plan.total_channels * 0.3)
    plan3 = plan_pruning(model, 0.3, min_channels=3)
    assert len(plan3.kept["features.1"]) == 3


def test_max_layer_fraction_caps_each_layer():
    model = _vgg()
    plan = plan_pruning(model, 0.9, max_layer_fraction=0.5)
    for path, report in plan.layers.items():
        assert report.width - report.kept <= math.floor(report.width * 0.5), path


def test_layer_percent_prunes_that_fraction_of_every_layer():
    model = randomize_bn(models.create("mlp"))
    plan = plan_pruning(model, layer_percent=0.8)  # paper Table 3: 784-100-60-10
    assert [len(k) for k in plan.kept.values()] == [100, 60]
    gam = _gammas(model) or {n: m.weight.detach().abs() for n, m in model.named_modules()
                             if isinstance(m, torch.nn.BatchNorm1d)}
    for path, kept in plan.kept.items():
        g = gam[path]
        dropped = [i for i in range(len(g)) if i not in kept]
        assert g[dropped].max() <= g[list(kept)].min()


def test_layer_percent_by_pattern():
    model = randomize_bn(models.create("mlp"))
    plan = plan_pruning(model, layer_percent={"hidden.1": 0.5})
    assert [len(k) for k in plan.kept.values()] == [250, 300]


def test_round_to_keeps_multiples():
    plan = plan_pruning(_vgg(), 0.6, round_to=8)
    for report in plan.layers.values():
        assert report.kept % 8 == 0 or report.kept == report.width


def test_exclude_keeps_a_layer_whole():
    plan = plan_pruning(_vgg(), 0.7, exclude=["features.1"])
    assert len(plan.kept["features.1"]) == 8


def test_plan_serialization_round_trip(tmp_path):
    plan = plan_pruning(_vgg(), 0.6, max_layer_fraction=0.5)
    plan.save(tmp_path / "plan.json")
    again = PruningPlan.load(tmp_path / "plan.json")
    assert again == plan
    assert again.achieved_percent == pytest.approx(plan.pruned_channels / plan.total_channels)


def test_planning_does_not_touch_the_model():
    model = _vgg()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan_pruning(model, 0.7)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kwargs, message", [
    (dict(percent=1.0), r"\[0, 1\)"), (dict(percent=1.5), r"\[0, 1\)"), (dict(percent=-0.1), r"\[0, 1\)"),
    (dict(percent=0.5, min_channels=0), "min_channels"), (dict(), "exactly one"),
    (dict(percent=0.5, layer_percent=0.5), "exactly one"), (dict(percent=0.5, round_to=0), "round_to"),
    (dict(percent=0.5, aggregate="mean"), "aggregate"), (dict(percent=0.5, max_layer_fraction=2), "max_layer"),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_pruning(_vgg(), **kwargs)


def test_not_a_plan(tmp_path):
    (tmp_path / "x.json").write_text("{\"kept\": 3}")
    with pytest.raises(ValueError, match="not a pruning plan"):
        PruningPlan.load(tmp_path / "x.json")


def test_collapsed_scales_are_detected_before_pruning():
    model = _vgg()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.mul_(1e-9)
    with pytest.raises(ValueError, match="collapsed"):
        plan_pruning(model, 0.5)


def test_a_collapsed_layer_is_reported():
    model = _vgg()
    with torch.no_grad():
        model.features[1].weight.zero_()
    plan = plan_pruning(model, 0.3)
    assert plan.layers["features.1"].guard == "collapsed" and len(plan.kept["features.1"]) == 1


def test_exclude_pattern_matching_nothing():
    with pytest.raises(ValueError, match="matches no module"):
        plan_pruning(_vgg(), 0.5, exclude=["head.*"])


class _Blocks(torch.nn.Module):
    """A stem, a block of two conv+BN pairs, a block-like name that is not the block, a tail, a head with no BN."""

    def __init__(self):
        super().__init__()
        def pair(c_in, c_out):
            return torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.BatchNorm2d(c_out),
                                       torch.nn.ReLU())
        self.stem = pair(3, 8)
        self.block = torch.nn.Sequential(pair(8, 8), pair(8, 8))
        self.blockade = pair(8, 8)
        self.tail = pair(8, 8)
        self.head = torch.nn.Linear(8, 4)
        self.input_size = (3, 8, 8)

    def forward(self, x):
        return self.head(self.tail(self.blockade(self.block(self.stem(x)))).mean((2, 3)))


@pytest.mark.parametrize("pattern, chosen", [
    ("block", {"block.0.1", "block.1.1"}),      # a module and everything inside it
    ("block.*", {"block.0.1", "block.1.1"}),    # its children: the same BNs
    ("block.1", {"block.1.1"}),
    ("block*", {"block.0.1", "block.1.1", "blockade.1"}),  # fnmatch: '*' also matches 'ade'
    ("stem", {"stem.1"}),
])
def test_exclude_and_fixed_select_the_same_bns_by_one_rule(pattern, chosen):
    from netslim import sparsify
    model = randomize_bn(_Blocks())
    every = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    handle = sparsify(model, torch.optim.SGD(model.parameters(), lr=0.1), lam=1e-4, exclude=[pattern])
    assert every - set(handle.regularizer.bns) == chosen  # left out of the penalty
    handle.remove()
    never_pruned = plan_pruning(model, 0.99, exclude=[pattern])  # excluded BNs keep every channel
    assert {p for p in every if len(never_pruned.kept[p]) == 8} == chosen
    kept_as_is = plan_pruning(model, 0.99, fixed=[pattern])  # fixed modules are out of the plan altogether
    assert every - set(kept_as_is.layers) == chosen


@pytest.mark.parametrize("pattern", ["nothere", "head.*", "block.2"])
def test_a_pattern_matching_no_module_is_the_same_error_for_exclude_and_fixed(pattern):
    from netslim import sparsify
    model = randomize_bn(_Blocks())
    calls = {"sparsify(exclude=)": lambda: sparsify(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                                    exclude=[pattern]),
             "plan_pruning(exclude=)": lambda: plan_pruning(model, 0.5, exclude=[pattern]),
             "plan_pruning(fixed=)": lambda: plan_pruning(model, 0.5, fixed=[pattern])}
    for what, call in calls.items():
        with pytest.raises(ValueError, match=rf"pattern '{pattern}' matches no module of _Blocks") as e:
            call()
        assert "stem" in str(e.value) and "\n" not in str(e.value), what
    plan_pruning(model, 0.5, fixed=["head"])  # a module without BN is a match: kept as it is


def test_printing_a_plan_gives_a_short_summary():
    model = randomize_bn(models.create("resnet164", num_classes=10))
    plan = plan_pruning(model, 0.5)
    text, line = str(plan), repr(plan)
    assert "\n" not in line and len(line) < 120
    assert line.startswith(f"PruningPlan({plan.pruned_channels}/{plan.total_channels} channels pruned (50.0%)")
    assert f"threshold |γ| {plan.threshold:.4g}" in line
    assert len(text.splitlines()) <= 12 and "more layers in plan.layers" in text
    worst = min(plan.layers, key=lambda p: plan.layers[p].kept / plan.layers[p].width)
    assert worst in text.splitlines()[2]


def test_a_nan_scale_is_refused_by_name_not_ranked():
    """A NaN γ sorts anywhere: the plan kept 1 of 16 channels of that layer without a word."""
    model = _vgg()
    with torch.no_grad():
        model.features[1].weight[3] = float("nan")
    with pytest.raises(ValueError, match="BN 'features.1' has 1 NaN or infinite scale") as e:
        plan_pruning(model, 0.5)
    assert "\n" not in str(e.value)


def test_a_model_without_weight_values_is_one_line():
    with torch.device("meta"):
        model = models.create("vgg11", widths=[8, 16, 16, 16, 32, 32, 32, 32])
    with pytest.raises(ValueError, match="meta device"):
        plan_pruning(model, 0.5)


def _plan_data():
    return plan_pruning(_vgg(), 0.5).to_dict()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["kept"].update({"features.1": [0.9, 1.7]}), "integer channel indices"),
    (lambda d: d["kept"].update({"features.1": [True, 2]}), "integer channel indices"),
    (lambda d: d["kept"].update({"features.1": [3, 1]}), "increasing order"),
    (lambda d: d["kept"].update({"features.1": [1, 1]}), "distinct"),
    (lambda d: d["kept"].update({"features.1": [-1]}), "keeps channel -1 of layer 'features.1'"),
    (lambda d: d["kept"].update({"features.1": list(range(9))}), "keeps channel 8 of layer 'features.1'"),
    (lambda d: d["kept"].update({"features.1": [0]}), "as its layer report says"),
    (lambda d: d["kept"].pop("features.1"), "name different layers"),
    (lambda d: d["options"].update(input_shape=[1, 3, 10 ** 6, 10 ** 6]), "input_shape"),
    (lambda d: d["options"].update(input_shape=["a", 3]), "input_shape"),
    (lambda d: d["options"].update(input_shape=[1, 3, 40000, 40000]), "input_shape"),
    (lambda d: d["options"].update(fixed="features.*"), "options.fixed"),
])
def test_a_plan_file_is_checked_when_read(tmp_path, edit, message):
    data = _plan_data()
    edit(data)
    with pytest.raises(ValueError, match=message):
        PruningPlan.from_dict(data)
    import json

    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as e:
        PruningPlan.load(tmp_path / "p.json")
    assert str(tmp_path / "p.json") in str(e.value) and "\n" not in str(e.value)


def test_a_plan_file_nested_past_the_parser_is_one_line(tmp_path):
    (tmp_path / "p.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        PruningPlan.load(tmp_path / "p.json")
    (tmp_path / "q.json").write_text("[]")
    with pytest.raises(ValueError, match="not an object"):
        PruningPlan.load(tmp_path / "q.json")


def test_a_plan_fixing_every_layer_says_so():
    import netslim

    model = _vgg()
    data = _plan_data()
    data["options"]["fixed"] = ["*"]
    with pytest.raises(ValueError, match="fixed=\\['\\*'\\].*nothing is left to prune"):
        netslim.apply_plan(model, PruningPlan.from_dict(data))

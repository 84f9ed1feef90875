"""plan_for: one call from a model and an amount to prune to the plan (what `netslim prune` calls)."""

import math

import pytest
import torch

from netslim import models
from netslim.plan import DEFAULT_PERCENT
from netslim.pruning import plan_for
from netslim.testing import randomize_bn


def _vgg():
    return randomize_bn(models.create("vgg11", widths=[8, 16, 16, 16, 32, 32, 32, 32])).eval()


def test_no_amount_prunes_the_default_percent_exactly_on_a_cpu_target():
    planned = plan_for(_vgg(), torch.zeros(2, 3, 32, 32), target="cpu")
    assert (planned.target, planned.round_to, planned.predicted_latency) == ("cpu", 1, None)
    assert planned.plan.pruned_channels == math.floor(planned.plan.total_channels * DEFAULT_PERCENT)


def test_a_gpu_target_rounds_widths_to_its_multiple():
    planned = plan_for(_vgg(), torch.zeros(2, 3, 32, 32), percent=0.5, target="gpu")
    assert planned.round_to == 8 and all(len(k) % 8 == 0 for k in planned.plan.kept.values())


def test_layer_percent_and_budget():
    model = _vgg()
    by_layer = plan_for(model, torch.zeros(2, 3, 32, 32), layer_percent=0.5, target="cpu").plan
    assert all(len(by_layer.kept[p]) == r.width - math.floor(r.width * 0.5) for p, r in by_layer.layers.items())
    by_flops = plan_for(model, torch.zeros(2, 3, 32, 32), target_flops=0.5, target="cpu").plan
    assert by_flops.pruned_channels > 0


def test_one_amount_at_a_time():
    with pytest.raises(ValueError, match="percent and target_flops"):
        plan_for(_vgg(), torch.zeros(2, 3, 32, 32), percent=0.5, target_flops=0.5)

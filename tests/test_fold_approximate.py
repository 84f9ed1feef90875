"""β of pruned channels next to zero-padded convs (the Fashion-MNIST experiment's VGG): folded exactly in the interior,
approximately only at the border positions; the exact-only mode stays as it was."""

import pytest
import torch
from torch import nn

from netslim import apply_plan, masked_model, plan_pruning
from netslim.surgery import fold_report


class PaddedReader(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_size = (3, 12, 12)
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


def _model():
    torch.manual_seed(0)
    model = PaddedReader().eval()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([1.0, 0.001, 0.8, 0.002, 0.9, 0.7, 0.003, 0.6]))
        model.bn1.bias.uniform_(0.2, 0.5)  # pruned channels still output ReLU(β) > 0
        model.bn2.weight.fill_(1.0)
    return model


def test_approximate_fold_is_exact_inside_and_close_at_the_border():
    model = _model()
    plan = plan_pruning(model, 3 / 8)
    assert len(plan.kept["bn1"]) == 5
    x = torch.randn(2, 3, 12, 12)
    approx, reference = apply_plan(model, plan, fold_bias="approximate"), masked_model(model, plan,
                                                                                      fold_bias="approximate")
    with torch.no_grad():
        a, r = approx(x), reference(x)
        dropped = apply_plan(model, plan, fold_bias=True)(x)  # exact-only mode: β dropped next to padding
    inside = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(a[inside], r[inside], atol=1e-5, rtol=1e-5)
    assert (a - r).abs().max() > 1e-4  # the border is where it is approximate
    assert (a - r).abs().mean() < (dropped - r).abs().mean() / 3  # far closer than dropping β
    assert fold_report(model, plan, fold_bias="approximate") == {"conv2": "approximate"}
    assert fold_report(model, plan) == {"conv2": "dropped"}


def test_exact_mode_still_equals_its_masked_model():
    model = _model()
    plan = plan_pruning(model, 3 / 8)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(apply_plan(model, plan)(x), masked_model(model, plan)(x))


def test_unknown_fold_mode_is_one_clear_error():
    model = _model()
    with pytest.raises(ValueError, match="fold_bias"):
        apply_plan(model, plan_pruning(model, 0.2), fold_bias="sometimes")


def test_on_a_map_that_is_all_border_the_fold_uses_the_taps_that_exist():
    """Deep in a CIFAR network a padded 3x3 conv runs on 1x1 maps: only its centre tap sees the
    constant, so folding the full kernel sum would be far off; the fold must be exact there."""
    model = _model()
    x = torch.randn(2, 3, 1, 1)
    plan = plan_pruning(model, 3 / 8, example_input=x)
    approx = apply_plan(model, plan, fold_bias="approximate")
    with torch.no_grad():
        torch.testing.assert_close(approx(x), masked_model(model, plan, fold_bias="approximate")(x),
                                   atol=1e-5, rtol=1e-5)

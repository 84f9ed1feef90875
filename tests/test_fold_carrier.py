"""β of pruned channels carried exactly through zero-padded convs (``fold_bias="carrier"``).

A pruned channel outputs a constant (ReLU(β)); a zero-padded conv sees it at every tap inside the
image and not at the border. One pruned channel kept as a constant (γ = 0) and given the others'
weights, scaled by their constants, is cut off by the padding exactly like them: the compact model
equals the masked one (γ zeroed, β kept) at every position, at any input size.
"""

import pytest
import torch
from torch import nn

from netslim import apply_plan, masked_model, models, plan_pruning
from netslim.surgery import fold_report
from netslim.testing import randomize_bn


class PaddedReader(nn.Module):
    def __init__(self, padding_mode="zeros", transposed=False):
        super().__init__()
        self.input_size = (3, 12, 12)
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2 = nn.ConvTranspose2d(8, 6, 3, padding=1, bias=False) if transposed else \
            nn.Conv2d(8, 6, 3, padding=1, bias=False, padding_mode=padding_mode)
        self.bn2 = nn.BatchNorm2d(6)
        self.head = nn.Linear(8, 4)  # a second reader of bn1's channels: the carrier reaches it by itself

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(y)), self.head(y.mean((2, 3)))


def _model(**kwargs):
    torch.manual_seed(0)
    model = PaddedReader(**kwargs).eval()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([1.0, 0.001, 0.8, 0.002, 0.9, 0.7, 0.003, 0.6]))
        model.bn1.bias.copy_(torch.tensor([0.1, 0.3, 0.2, 0.5, 0.1, 0.2, 0.4, 0.3]))  # ReLU(β) > 0: constants
        model.bn2.weight.fill_(1.0)
    return model


def _run(model, x):
    with torch.no_grad():
        return torch.cat([t.flatten(1) for t in model.eval()(x)], 1)


@pytest.mark.parametrize("size", [12, 5, 1])
def test_carried_constants_are_exact_at_every_position(size):
    model = _model()
    x = torch.randn(2, 3, size, size)
    plan = plan_pruning(model, 3 / 8, example_input=x)
    assert sorted(plan.kept["bn1"]) == [0, 2, 4, 5, 7]
    carried = apply_plan(model, plan, fold_bias="carrier")
    reference = _run(masked_model(model, plan, fold_bias="carrier"), x)
    torch.testing.assert_close(_run(carried, x), reference, atol=1e-5, rtol=1e-5)
    # not trivially: dropping the constants (the exact-only mode) is far off, and so is the border of
    # the approximate fold; and the exactness holds at another input size than the analysed one
    assert (_run(apply_plan(model, plan, fold_bias=True), x) - reference).abs().max() > 1e-2
    if size > 2:
        assert (_run(apply_plan(model, plan, fold_bias="approximate"), x) - reference).abs().max() > 1e-4
    other = torch.randn(1, 3, size + 3, size + 2)
    torch.testing.assert_close(_run(carried, other), _run(masked_model(model, plan, fold_bias="carrier"), other),
                               atol=1e-5, rtol=1e-5)


def test_one_channel_carries_once_with_its_beta_and_no_scale():
    """The carrier is the pruned channel with the largest constant (β = 0.5: channel 3), kept with γ = 0;
    its own constant is counted once (folding it again would double it, dropping it would lose it)."""
    model = _model()
    plan = plan_pruning(model, 3 / 8)
    carried = apply_plan(model, plan, fold_bias="carrier")
    assert carried.bn1.num_features == 6 and carried.conv2.in_channels == 6 and carried.head.in_features == 6
    kept = [0, 2, 3, 4, 5, 7]
    assert carried.bn1.weight[kept.index(3)].item() == 0
    assert carried.bn1.bias[kept.index(3)].item() == pytest.approx(0.5)
    w = model.conv2.weight.detach()
    expected = w[:, 3] + w[:, 1] * 0.3 / 0.5 + w[:, 6] * 0.4 / 0.5
    torch.testing.assert_close(carried.conv2.weight[:, kept.index(3)].detach(), expected)
    torch.testing.assert_close(carried.head.weight[:, kept.index(3)].detach(), model.head.weight[:, 3].detach())
    assert fold_report(model, plan, fold_bias="carrier") == {"conv2": "carrier", "head": "exact"}


def test_no_carrier_where_the_constants_are_zero():
    model = _model()
    with torch.no_grad():
        model.bn1.bias.fill_(-1.0)  # ReLU(β) = 0: nothing to carry
    plan = plan_pruning(model, 3 / 8)
    assert apply_plan(model, plan, fold_bias="carrier").bn1.num_features == 5


def test_padding_that_repeats_the_image_folds_exactly_into_the_bias():
    model = _model(padding_mode="reflect")
    plan = plan_pruning(model, 3 / 8)
    x = torch.randn(2, 3, 12, 12)
    compact = apply_plan(model, plan)
    assert compact.bn1.num_features == 5 and fold_report(model, plan)["conv2"] == "exact"
    torch.testing.assert_close(_run(compact, x), _run(masked_model(model, plan), x), atol=1e-5, rtol=1e-5)


def test_a_reader_that_cannot_carry_drops_exactly():
    model = _model(transposed=True)
    plan = plan_pruning(model, 3 / 8)
    x = torch.randn(2, 3, 12, 12)
    assert fold_report(model, plan, fold_bias="carrier")["conv2"] == "dropped"
    torch.testing.assert_close(_run(apply_plan(model, plan, fold_bias="carrier"), x),
                               _run(masked_model(model, plan, fold_bias="carrier"), x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("vgg11a", "resnet164") else n
                                  for n in models.names()])  # the two largest: the slower tier
def test_carrying_is_never_worse_than_dropping(name):
    """On every registered model, the β-keeping masked model is the reference a user's trained network
    is: the carried compact model is at least as close to it as the exact-only and approximate ones."""
    model = randomize_bn(models.create(name), seed=1).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.bias.abs_()  # constants that survive the ReLU
    plan = plan_pruning(model, 0.5)
    x = torch.randn(2, *model.input_size)
    with torch.no_grad():
        reference = masked_model(model, plan, fold_bias="carrier")(x)
        errors = {mode: (apply_plan(model, plan, fold_bias=mode)(x) - reference).abs().max().item()
                  for mode in ("carrier", "approximate", True)}
    scale = reference.abs().max().item()
    assert errors["carrier"] <= 1e-4 * scale
    assert errors["carrier"] <= errors["approximate"] + 1e-6 and errors["carrier"] <= errors[True] + 1e-6


class TwoCarriers(nn.Module):
    """A U-Net decoder's pattern: a conv reading a concatenation of two groups that other convs read too,
    so that it meets two carriers (each must be counted once)."""

    def __init__(self):
        super().__init__()
        self.input_size = (3, 10, 10)
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.read_a, self.read_b = nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.read_both = nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        return self.read_a(a), self.read_b(b), self.read_both(torch.cat([a, b], 1))


def test_a_conv_meeting_two_carriers_counts_each_once():
    model = randomize_bn(TwoCarriers(), seed=3).eval()
    with torch.no_grad():
        for bn in (model.a[1], model.b[1]):
            bn.bias.abs_()
    plan = plan_pruning(model, 0.5)
    carried = apply_plan(model, plan, fold_bias="carrier")
    assert carried.a[1].num_features == len(plan.kept["a.1"]) + 1 and carried.b[1].num_features == len(
        plan.kept["b.1"]) + 1
    x = torch.randn(2, 3, 10, 10)
    torch.testing.assert_close(_run(carried, x), _run(masked_model(model, plan, fold_bias="carrier"), x),
                               atol=1e-5, rtol=1e-5)

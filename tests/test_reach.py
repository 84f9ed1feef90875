"""How far the channel analysis reaches: operands broadcast over channels, whole groups of grouped
convolutions, channels moved to another dimension (tokens) and back. Small hand-written models here;
the same mechanisms on third-party definitions are in test_zoo.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netslim import apply_plan, count_params, masked_model, plan_pruning, trace_channels
from netslim.plan import channel_scores

from .conftest import randomize_bn


def _close(ref: nn.Module, small: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected, got = ref.eval()(x), small.eval()(x)
    assert got.shape == expected.shape
    assert float((expected - got).abs().max()) <= 1e-4 * float(expected.abs().max()) + 1e-6


class ScalarAffine(nn.Module):
    """conv-BN-ReLU, then ``scale * x + bias`` with one-element parameters (timm's LearnableAffineBlock),
    and a second branch scaled by a scalar computed from the input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.scale, self.bias = nn.Parameter(torch.tensor([1.5])), nn.Parameter(torch.tensor([0.0]))
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16)
        self.conv3, self.bn3 = nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8)
        self.head = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.scale * torch.relu(self.bn1(self.conv1(x))) + self.bias
        b = torch.relu(self.bn2(self.conv2(a)))
        c = self.bn3(self.conv3(b)) + x.amax()  # a scalar of the data: a removed channel would not be constant
        return self.head(torch.cat([b.mean((2, 3)), c.mean((2, 3))], 1))


def test_a_scalar_affine_neither_couples_nor_fixes_channels():
    model = randomize_bn(ScalarAffine(), seed=0).eval()
    graph = trace_channels(model, torch.randn(2, 3, 8, 8))
    assert [n.split(" ")[0] for n in graph.notes] == ["amax"], graph.notes  # of the input, which stays anyway
    prunable = graph.prunable_roots()
    roots = {p: {graph.root(i) for i in u.out_ids} for p, u in graph.bns.items()}
    assert roots["bn1"] <= prunable and roots["bn2"] <= prunable
    assert not roots["bn3"] & prunable  # + a scalar of the input: not zero when its BN scale is
    plan = plan_pruning(model, percent=0.4, graph=graph)
    small = apply_plan(model, plan, graph=graph)
    assert small.conv1.out_channels < 16 and small.conv2.in_channels == small.conv1.out_channels
    assert count_params(small) < count_params(model)
    _close(masked_model(model, plan, graph=graph), small, torch.randn(3, 3, 10, 10))


class PaddedStem(nn.Module):
    """HGNetV2's stem: an explicit zero ``F.pad`` before an unpadded conv, so a removed channel's constant
    (its β after ReLU) would reach that conv with a border of zeros, which no bias can reproduce."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, stride=2), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 8, 2), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(nn.functional.pad(x, (0, 1, 0, 1))))


@pytest.mark.filterwarnings("error:pruned channels")  # surgery's warning that folding was inexact
def test_a_zero_pad_before_an_unpadded_conv_zeroes_the_removed_constants():
    model = randomize_bn(PaddedStem(), seed=0).eval()
    with torch.no_grad():
        model.bn1.bias.copy_(torch.linspace(0.2, 1.0, 16))  # every removed channel carries ReLU(β) > 0
    plan = plan_pruning(model, percent=0.5, example_input=torch.randn(2, 3, 16, 16))
    small = apply_plan(model, plan)
    assert small.conv2.in_channels == 8
    _close(masked_model(model, plan), small, torch.randn(3, 3, 20, 20))


class GroupedKinds(nn.Module):
    """A grouped conv (4 groups, 4 -> 8 channels each), a depthwise conv with a channel multiplier of 2 (each
    input channel writes two outputs) and a grouped transposed conv, each with a BN after it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.grouped, self.bn2 = nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32)
        self.multiplier, self.bn3 = nn.Conv2d(32, 64, 3, padding=1, groups=32), nn.BatchNorm2d(64)
        self.up, self.bn4 = nn.ConvTranspose2d(64, 16, 2, stride=2, groups=4), nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.grouped(x)))
        x = torch.relu(self.bn3(self.multiplier(x)))
        return self.head(torch.relu(self.bn4(self.up(x))))


@pytest.mark.filterwarnings("error:pruned channels")
@pytest.mark.parametrize("fold", [True, False, "carrier"])
def test_grouped_convs_of_every_kind_lose_whole_groups(fold):
    model = randomize_bn(GroupedKinds(), seed=0).eval()
    with torch.no_grad():  # the inputs of group 1 of ``grouped`` and of channel 5 of ``multiplier`` rank last
        model.bn1.weight[4:8] = 1e-4
        model.bn2.weight[5] = 1e-4
        model.bn3.weight[16:32] = 1e-4  # the inputs of group 1 of ``up`` (channels 16..31)
    graph = trace_channels(model, torch.randn(2, 3, 8, 8))
    scores = channel_scores(model, graph)
    assert sum(v < 1e-3 for v in scores.values()) == 3  # a group is one channel of the plan
    plan = plan_pruning(model, percent=3.5 / len(scores), graph=graph)
    small = apply_plan(model, plan, graph=graph, fold_bias=fold)
    assert (small.grouped.groups, small.grouped.in_channels, small.grouped.out_channels) == (3, 12, 24)
    # bn2 selects from the grouped conv's output: its channel 5 goes alone, taking its two multiplier outputs
    assert (small.multiplier.groups, small.multiplier.in_channels, small.multiplier.out_channels) == (31, 31, 62)
    assert (small.up.groups, small.up.in_channels, small.up.out_channels) == (3, 48, 12)
    assert torch.equal(small.up.weight, torch.cat([model.up.weight[:16], model.up.weight[32:]]))
    _close(masked_model(model, plan, graph=graph, fold_bias=fold), small, torch.randn(3, 3, 12, 12))


class TokenBlocks(nn.Module):
    """Channels that leave dim 1 and come back: a ConvNeXt-style MLP over ``permute(0, 2, 3, 1)``, a token
    Linear over ``flatten(2).transpose(1, 2)`` with a LeViT-style BN over ``flatten(0, 1)`` (``reshape_as``),
    mean-pooled tokens into the head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc1, self.bn2, self.fc2, self.bn4 = nn.Linear(16, 32), nn.BatchNorm2d(32), nn.Linear(32, 16), \
            nn.BatchNorm2d(16)
        self.token, self.bn3 = nn.Linear(16, 24), nn.BatchNorm1d(24)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        y = self.fc1(x.permute(0, 2, 3, 1))  # (B, H, W, 32)
        y = nn.functional.gelu(self.bn2(y.permute(0, 3, 1, 2)))  # back to dim 1 for the BN
        x = x + self.bn4(self.fc2(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        t = self.token(x.flatten(2).transpose(1, 2))  # (B, HW, 24)
        t = torch.relu(self.bn3(t.flatten(0, 1)).reshape_as(t))
        return self.head(t.mean(1))


@pytest.mark.filterwarnings("error:pruned channels")
@pytest.mark.parametrize("fold", [True, False, "carrier"])
def test_channels_followed_through_permutes_into_token_linears_and_back(fold):
    model = randomize_bn(TokenBlocks(), seed=0).eval()
    graph = trace_channels(model, torch.randn(2, 3, 6, 6))
    assert not graph.notes, graph.notes
    assert graph.layers["fc1"].axis == 3 and graph.layers["token"].axis == 2
    assert graph.layers["bn3"].kind == graph.layers["bn4"].kind == "bn"  # own their Linears through the views
    plan = plan_pruning(model, percent=0.4, graph=graph)
    small = apply_plan(model, plan, graph=graph, fold_bias=fold)
    kept = {p: len(plan.kept[p]) for p in ("bn1", "bn2", "bn3")}
    assert small.fc1.in_features == small.fc2.out_features == small.token.in_features == kept["bn1"] < 16
    assert small.fc1.out_features == small.fc2.in_features == kept["bn2"] < 32
    assert small.token.out_features == small.head.in_features == kept["bn3"] < 24
    _close(masked_model(model, plan, graph=graph, fold_bias=fold), small, torch.randn(3, 3, 7, 5))

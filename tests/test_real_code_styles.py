"""Fixtures written the way real model code is written (Ultralytics, timm, smp), not the way our
analysis would like it: list iteration over chunks, padding computed from the input size, BN
subclasses with the activation inside, attention that views channels into heads, heads that branch
on shapes. Each compact model must equal the masked one on the example input and on another size."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netslim import GraphError, apply_plan, masked_model, plan_pruning, trace_channels
from netslim.checkpoint import describe, load_model, save_checkpoint


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d pattern: normalisation, drop path and activation inside one BN subclass."""

    def __init__(self, n: int, act: bool = True) -> None:
        super().__init__(n)
        self.drop = nn.Identity()
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                         self.momentum, self.eps)
        return self.act(self.drop(x))


class Conv2dSame(nn.Conv2d):
    """timm's Conv2dSame: TensorFlow 'SAME' padding computed from the input size at every call."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        pads = []
        for size, k, s, d in zip((ih, iw), self.kernel_size, self.stride, self.dilation, strict=True):
            pads.append(max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0))
        x = F.pad(x, [pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Conv(nn.Module):
    """Ultralytics' Conv: conv + BN + SiLU in one block."""

    def __init__(self, c1, c2, k=1, s=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), True

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    """Ultralytics' C2f, verbatim in style: a list of chunks extended by a generator; ``forward_split``
    (what Ultralytics' exporter switches to) splits at ``self.c``."""

    def __init__(self, c1, c2, n=2):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))

    def forward_split(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class Attention(nn.Module):
    """YOLO11's PSA attention: qkv viewed into (heads, dims), matmuls, a positional depthwise conv."""

    def __init__(self, dim, num_heads=2):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.key_dim = self.head_dim // 2
        self.scale = self.key_dim ** -0.5
        self.qkv = Conv(dim, dim + 2 * self.key_dim * num_heads, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, act=False)
        self.pe.conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=False)

    def forward(self, x):
        B, C, H, W = x.shape
        N = H * W
        qkv = self.qkv(x)
        q, k, v = qkv.view(B, self.num_heads, self.key_dim * 2 + self.head_dim, N).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = (q.transpose(-2, -1) @ k) * self.scale
        attn = attn.softmax(dim=-1)
        x = (v @ attn.transpose(-2, -1)).view(B, C, H, W) + self.pe(v.reshape(B, C, H, W))
        return self.proj(x)


class Head(nn.Module):
    """A detection head that caches anchors and rebuilds them when the input shape changes."""

    def __init__(self, c, no=6):
        super().__init__()
        self.cv = nn.Sequential(Conv(c, c, 3), nn.Conv2d(c, no, 1))
        self.shape = None

    def forward(self, x):
        if self.shape != x.shape:
            self.anchors = torch.stack(torch.meshgrid(torch.arange(x.shape[2]), torch.arange(x.shape[3]),
                                                      indexing="ij")).float()[None]
            self.shape = x.shape
        y = self.cv(x)
        return {"boxes": torch.cat([y[:, :2] + self.anchors, y[:, 2:4].exp()], 1), "scores": y[:, 4:].sigmoid()}


class RealStyleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_size = (3, 32, 32)
        self.stem = Conv2dSame(3, 16, 3, 2, bias=False)
        self.stem_bn = BatchNormAct(16)
        self.c2f = C2f(16, 32)
        self.down = Conv(32, 32, 3, 2)
        self.attn = Attention(32)
        self.dense_bn = BatchNormAct(64)   # pre-activation BN on a concatenation: a selection BN
        self.dense_conv = nn.Conv2d(64, 32, 1, bias=False)
        self.head = Head(32)

    def forward(self, x):
        x = self.c2f(self.stem_bn(self.stem(x)))
        d = self.down(x)
        a = d + self.attn(d)
        y = self.dense_conv(self.dense_bn(torch.cat([d, a], 1)))
        return self.head(y)


def _randomized(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g))
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def _close(a, b):
    for k in a:
        assert (a[k] - b[k]).abs().max() <= 1e-4 * a[k].abs().max(), k


@pytest.mark.parametrize("percent", [0.3, 0.6])
def test_real_code_styles_prune_exactly_at_any_input_size(percent):
    model = _randomized(RealStyleNet())
    plan = plan_pruning(model, percent)
    small, masked = apply_plan(model, plan).eval(), masked_model(model, plan).eval()
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    for size in (32, 48):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            _close(masked(x), small(x))
    # the BN subclasses keep their class and their activation; the concatenation's BN selects
    assert type(small.stem_bn) is BatchNormAct and isinstance(small.stem_bn.act, nn.SiLU)
    assert type(small.dense_bn) is BatchNormAct and small.dense_bn.num_features < 64
    assert type(small.stem) is Conv2dSame and small.stem.out_channels < 16
    # attention keeps its channels: never cut apart
    assert small.attn.qkv.conv.weight.shape == model.attn.qkv.conv.weight.shape
    # Ultralytics' exporter path splits at self.c: kept in step with the narrowed cv1
    assert small.c2f.c * 2 == small.c2f.cv1.conv.out_channels
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small.c2f.forward_split(small.stem_bn(small.stem(x))),
                                   small.c2f(small.stem_bn(small.stem(x))))


def test_compact_real_style_model_saves_and_rebuilds(tmp_path):
    model = _randomized(RealStyleNet())
    small = apply_plan(model, plan_pruning(model, 0.5)).eval()
    save_checkpoint(tmp_path / "s.pt", {"arch": describe(small, "f"), "state_dict": small.state_dict()})
    rebuilt, _ = load_model(tmp_path / "s.pt", factory=RealStyleNet)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        _close(small(x), rebuilt.eval()(x))
    assert type(rebuilt.dense_bn) is BatchNormAct


def test_why_channels_are_kept_is_reported():
    class LayerScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_size = (3, 16, 16)
            self.a, self.frozen = Conv(3, 8, 3), nn.BatchNorm2d(8, affine=False)
            self.gamma = nn.Parameter(torch.ones(8, 1, 1))
            self.b = Conv(8, 8, 3)

        def forward(self, x):
            return self.b(self.frozen(self.a(x)) * self.gamma)

    graph = trace_channels(LayerScale())
    assert any("frozen" in n and "no learnable scale" in n for n in graph.notes)
    assert any("mul" in n for n in graph.notes)  # the per-channel constant keeps a's channels
    prunable = graph.prunable_roots()
    assert not any(graph.root(i) in prunable for i in graph.layers["a.bn"].out_ids)


class _DataShaped(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_size = (3, 8, 8)
        self.a = Conv(3, 4)

    def forward(self, x):
        y = self.a(x)
        return y[y > 0]


class _NeedsSize(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_size = (3, 8, 8)
        self.a, self.b = Conv(3, 4), nn.Linear(64 * 4, 2)

    def forward(self, x):
        return self.b(self.a(x).flatten(1))


@pytest.mark.parametrize("model,match", [(_DataShaped(), "shape depends on the values"),
                                         (_NeedsSize(), "module 'b' .*failed on the example input")])
def test_bad_models_are_one_line_naming_the_module_and_left_unmodified(model, match):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    x = torch.randn(2, 3, 16, 16) if isinstance(model, _NeedsSize) else None
    with pytest.raises(GraphError, match=match) as e:
        trace_channels(model, x)
    assert "\n" not in str(e.value)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_code_that_reads_channel_counts_is_found_by_a_probe_and_kept():
    model = _randomized(RealStyleNet())
    graph = trace_channels(model)
    assert any("module 'attn' reads channel counts" in n for n in graph.notes)
    prunable = graph.prunable_roots()
    assert not any(graph.root(i) in prunable for i in graph.layers["down.bn"].out_ids)
    assert any(graph.root(i) in prunable for i in graph.layers["c2f.cv1.bn"].out_ids)


class RepBlock(nn.Module):
    """timm's RepVggBlock: relu(bn(conv3x3 x) + bn(conv1x1 x) + bn(x)); the identity BN reads the block input."""

    def __init__(self, c):
        super().__init__()
        self.kxk = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.k1 = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.identity = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.kxk(x) + self.k1(x) + self.identity(x))


def test_an_identity_branch_bn_does_not_hold_back_the_channels_it_reads():
    """The percent asked is the percent pruned: a kept identity-BN channel whose input is removed
    outputs the constant the masked model gives it (γ = 0, β = that constant), exactly."""
    model = _randomized(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      *[RepBlock(16) for _ in range(4)], nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      nn.Linear(16, 10)))
    x = torch.randn(2, 3, 32, 32)
    plan = plan_pruning(model, 0.5, example_input=x)
    assert plan.achieved_percent == pytest.approx(0.5, abs=0.01)
    for fold in (True, False, "carrier"):
        small = apply_plan(model, plan, fold_bias=fold).eval()
        with torch.no_grad():
            _close({"y": masked_model(model, plan, fold_bias=fold)(x)}, {"y": small(x)})

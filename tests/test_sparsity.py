import pytest
import torch
from torch import nn

from netslim import SparsityRegularizer, init_bn_scales, models


def _model():
    model = models.create("mlp", widths=[6, 5], input_size=(1, 2, 2))
    with torch.no_grad():
        for bn in (model.hidden[1], model.hidden[4]):
            bn.weight.copy_(torch.linspace(-0.5, 0.6, bn.num_features))
    return model


def _gammas(model):
    return [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm1d)]


@pytest.mark.parametrize("kind", ["l1", "smooth_l1", "polarization"])
def test_gradient_term_equals_autograd_of_the_penalty(kind):
    model = _model()
    reg = SparsityRegularizer(model, lam=1e-2, kind=kind, beta=0.3)
    gammas = _gammas(model)
    for g in gammas:
        g.grad = torch.zeros_like(g)
    reg.step()
    added = torch.cat([g.grad.clone() for g in gammas])
    # Reference: autograd of the closed-form penalty.
    for g in gammas:
        g.grad = None
    flat = torch.cat([g.flatten() for g in gammas])
    if kind == "l1":
        value = flat.abs().sum()
    elif kind == "smooth_l1":
        a = flat.abs()
        value = torch.where(a < 0.3, 0.5 * a * a / 0.3, a - 0.15).sum()
    else:
        value = 1.2 * flat.abs().sum() - (flat - flat.mean()).abs().sum()
    (1e-2 * value).backward()
    expected = torch.cat([g.grad for g in gammas])
    torch.testing.assert_close(added, expected)
    assert reg.penalty().item() == pytest.approx(1e-2 * value.item(), rel=1e-5)


def test_l1_term_is_lambda_times_sign_added_to_existing_gradient():
    model = _model()
    reg = SparsityRegularizer(model, lam=0.5)
    for g in _gammas(model):
        g.grad = torch.ones_like(g)
    reg.step()
    for g in _gammas(model):
        torch.testing.assert_close(g.grad, 1 + 0.5 * torch.sign(g.detach()))


def test_sparsity_training_drives_scales_to_zero():
    torch.manual_seed(0)
    model = models.create("mlp", widths=[16], input_size=(1, 2, 2), num_classes=2)
    x, y = torch.randn(256, 1, 2, 2), torch.randint(0, 2, (256,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    reg = SparsityRegularizer(model, lam=0.05)
    before = model.hidden[1].weight.detach().abs().mean()
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        reg.step()
        opt.step()
    after = model.hidden[1].weight.detach().abs()
    assert after.mean() < 0.25 * before
    assert (after < 1e-2).float().mean() > 0.3


def test_polarization_clamps_scales_after_the_step():
    model = _model()
    reg = SparsityRegularizer(model, lam=1e-2, kind="polarization", upper=0.5)
    reg.after_step()
    flat = torch.cat([g.detach() for g in _gammas(model)])
    assert flat.min() >= 0 and flat.max() <= 0.5


def test_init_bn_scales():
    model = _model()
    init_bn_scales(model, 0.5)
    assert all(torch.all(g == 0.5) for g in _gammas(model))


@pytest.mark.parametrize("kwargs, message", [
    (dict(lam=-1.0), "λ must be >= 0"), (dict(kind="l2"), "unknown sparsity kind"),
    (dict(exclude=["nothing.*"]), "matches no module"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparsityRegularizer(_model(), **kwargs)


def test_model_without_batchnorm_is_refused():
    with pytest.raises(ValueError, match="no BatchNorm"):
        SparsityRegularizer(nn.Sequential(nn.Linear(2, 2)))


def test_exclude_pattern_leaves_those_scales_alone():
    model = _model()
    reg = SparsityRegularizer(model, lam=1.0, exclude=["hidden.1"])
    for g in _gammas(model):
        g.grad = torch.zeros_like(g)
    reg.step()
    assert torch.all(model.hidden[1].weight.grad == 0)
    assert torch.any(model.hidden[4].weight.grad != 0)

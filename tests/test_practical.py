"""Sparsity that survives real training setups, and recovering accuracy after pruning (issue: practitioners)."""

import pytest
import torch
import torch.nn.functional as F

from netslim import SparsityRegularizer, apply_plan, models, plan_pruning
from netslim.data import Dataset, Loader
from netslim.models import create_model
from netslim.sparsity import lambda_at
from netslim.train import TrainConfig, recalibrate_bn, train


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 1, 2, 2, generator=g)
    y = (x.flatten(1).sum(1) > 0).long()
    torch.manual_seed(seed)
    model = models.create("mlp", widths=[16], input_size=(1, 2, 2), num_classes=2)
    return model, x, y


def _gamma(model):
    return model.hidden[1].weight.detach().abs()


def _steps(model, x, y, optimizer, reg, n=120, scaler=None, clip=None, autocast=False):
    for _ in range(n):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x).float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # the L1 term goes on true gradients, never on scaled ones
            reg.step()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            reg.step()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
        reg.after_step(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("setup", ["plain", "amp_gradscaler", "grad_clip", "bf16_autocast"])
def test_sparsity_shrinks_scales_in_every_training_setup(setup):
    model, x, y = _problem()
    before = _gamma(model).mean()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    reg = SparsityRegularizer(model, lam=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12) if setup == "amp_gradscaler" else None
    _steps(model, x, y, opt, reg, scaler=scaler, clip=1.0 if setup == "grad_clip" else None,
           autocast=setup == "bf16_autocast")
    after = _gamma(model)
    assert after.mean() < 0.3 * before
    assert (after < 1e-2).float().mean() > 0.25


def test_adam_needs_the_proximal_step():
    results = {}
    for proximal in (False, True):
        model, x, y = _problem()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        reg = SparsityRegularizer(model, lam=2.0, proximal=proximal)
        _steps(model, x, y, opt, reg, n=150)
        results[proximal] = (_gamma(model) == 0).float().mean().item()
    assert results[True] > 0.3  # exact zeros: soft-thresholding
    assert results[True] > results[False]


def test_proximal_step_is_soft_thresholding():
    model, _, _ = _problem()
    with torch.no_grad():
        model.hidden[1].weight.copy_(torch.linspace(-1, 1, 16))
    reg = SparsityRegularizer(model, lam=0.5, proximal=True)
    reg.after_step(lr=0.4)  # threshold 0.2
    w = torch.linspace(-1, 1, 16)
    torch.testing.assert_close(model.hidden[1].weight.detach(), torch.sign(w) * (w.abs() - 0.2).clamp_min(0))


def test_lambda_schedules():
    assert [lambda_at(1.0, e, 10, "constant") for e in (0, 9)] == [1.0, 1.0]
    assert lambda_at(1.0, 0, 10, "warmup", 0.5) == pytest.approx(0.2)
    assert lambda_at(1.0, 7, 10, "warmup", 0.5) == 1.0
    assert [lambda_at(1.0, e, 8, "step") for e in (0, 4, 6)] == pytest.approx([1.0, 0.1, 0.01])
    assert lambda_at(1.0, 5, 10, "linear") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="λ must be >= 0"):
        lambda_at(-1.0, 0, 10, "warmup")
    with pytest.raises(ValueError, match="unknown λ schedule"):
        lambda_at(1.0, 0, 10, "cosine")


def test_recalibration_sets_running_statistics_to_the_data():
    model, x, _ = _problem()
    loader = [(x, None)]
    recalibrate_bn(model, loader, batches=1)
    features = model.hidden[0](x.flatten(1))
    torch.testing.assert_close(model.hidden[1].running_mean, features.mean(0).detach(), rtol=1e-4, atol=1e-5)
    assert model.hidden[1].momentum == 0.1 and not model.training or model.training


def test_recalibration_helps_a_pruned_network_with_stale_statistics():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (512,), generator=g)
    images = (torch.rand(512, 1, 4, 4, generator=g) * 100 + labels[:, None, None, None] * 50).to(torch.uint8)
    data = Dataset(images, labels, 3, (0.5,), (0.25,), "toy")
    torch.manual_seed(0)
    model = models.create("mlp", widths=[64, 32], input_size=(1, 4, 4), num_classes=3)
    train(model, Loader(data, 32), TrainConfig(epochs=3, lr=0.05, progress=False, bn_init=0.5, sparsity=1e-3))
    small = apply_plan(model.eval(), plan_pruning(model, 0.6), fold_bias=False)
    stale = small.hidden[4].running_mean.clone()
    recalibrate_bn(small, Loader(data, 64, train=False), batches=4)
    assert not torch.allclose(stale, small.hidden[4].running_mean)


def test_distillation_teacher_of_another_shape_is_a_clear_error():
    g = torch.Generator().manual_seed(0)
    data = Dataset(torch.randint(0, 255, (64, 1, 4, 4), dtype=torch.uint8, generator=g),
                   torch.randint(0, 3, (64,), generator=g), 3, (0.5,), (0.25,), "toy")
    student = models.create("mlp", widths=[8], input_size=(1, 4, 4), num_classes=3)
    teacher = models.create("mlp", widths=[8], input_size=(1, 4, 4), num_classes=5)
    with pytest.raises(ValueError, match="teacher's output"):
        train(student, Loader(data, 32), TrainConfig(epochs=1, distill=0.5, progress=False), teacher=teacher)


def test_distillation_trains_towards_the_teacher():
    g = torch.Generator().manual_seed(0)
    data = Dataset(torch.randint(0, 255, (256, 1, 4, 4), dtype=torch.uint8, generator=g),
                   torch.randint(0, 3, (256,), generator=g), 3, (0.5,), (0.25,), "noise")
    torch.manual_seed(1)
    teacher = models.create("mlp", widths=[32], input_size=(1, 4, 4), num_classes=3).eval()
    torch.manual_seed(2)
    student = models.create("mlp", widths=[32], input_size=(1, 4, 4), num_classes=3)
    x = torch.stack([img for img, _ in Loader(data, 256, train=False)])[0]

    def agreement():
        with torch.no_grad():
            return (student.eval()(x).argmax(1) == teacher(x).argmax(1)).float().mean().item()

    start = agreement()
    train(student, Loader(data, 32), TrainConfig(epochs=6, lr=0.05, distill=1.0, progress=False), teacher=teacher)
    assert agreement() > start + 0.3


def test_timm_or_torchvision_missing_is_a_clear_error():
    for source in ("timm", "torchvision"):
        try:
            __import__(source)
            continue
        except Exception:
            pass
        with pytest.raises(ImportError, match=f"pip install {source}"):
            create_model(f"{source}:resnet18", {})


def test_user_model_factory_by_import_path():
    model = create_model("netslim.models:vgg11", {"num_classes": 3})
    assert model.classifier.out_features == 3
    with pytest.raises(ValueError, match="cannot import 'nosuchpkg.mod' for model factory") as e:
        create_model("nosuchpkg.mod:f", {})
    assert "must be" not in str(e.value)  # it already has that form: not said twice
    with pytest.raises(ValueError, match="not of the form 'package.module:function'"):
        create_model("nosuchpkg.mod:", {})

"""netslim.sparsify: the paper's Eq. 1 attached to the optimizer, in loops netslim did not write.

The reference for every setup is the official port's ``updateBN``: after backward (and after
unscaling, after clipping), ``γ.grad += λ·sign(γ)``, then the optimizer step. The hooked term must
give bitwise the same weights, once per real step, never for a step a GradScaler skips.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netslim import Sparsity, models, sparsify
from netslim.data import Loader
from netslim.sparsity import attached
from netslim.testing import official_update_bn
from netslim.train import TrainConfig, make_scheduler, train

from .test_train import _data as toy_data
from .test_train import _model as toy_model

LAM, LR = 0.05, 0.1


class BatchNormAct(nn.BatchNorm1d):
    """A BN subclass fused with its activation, as timm's BatchNormAct2d."""

    def forward(self, x):
        return F.relu(super().forward(x))


def _model(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 5), BatchNormAct(5),
                          nn.Linear(5, 3))
    with torch.no_grad():  # both signs, a zero, and values smaller than one step's shrinkage
        model[1].weight.copy_(torch.tensor([0.5, -0.3, 0.0, 2e-3, -1e-3, 0.8]))
        model[4].weight.copy_(torch.linspace(-0.4, 0.6, 5))
    return model


def _batch(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _gammas(model):
    return [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm1d)]


def _update_bn(model, lam=LAM):
    """The official port's updateBN: the L1 subgradient added to each γ's gradient, one layer at a time."""
    official_update_bn(model, lam)


def _loss(model, step, zero=False):
    x, y = _batch(step)
    loss = F.cross_entropy(model(x), y)
    return 0 * loss if zero else loss


def _same(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def _sgd(model, **kw):
    return torch.optim.SGD(model.parameters(), lr=LR, **kw)


def test_one_step_with_zero_data_gradient_moves_gamma_by_lr_lambda_sign():
    model = _model()
    before = [g.detach().clone() for g in _gammas(model)]
    optimizer = _sgd(model)
    sparsify(model, optimizer, lam=LAM)
    optimizer.zero_grad()
    _loss(model, 0, zero=True).backward()
    optimizer.step()
    for g, g0 in zip(_gammas(model), before, strict=True):
        torch.testing.assert_close(g.detach(), g0 - LR * LAM * torch.sign(g0), rtol=0, atol=1e-7)
    assert model[1].weight[2] == 0  # sign(0) = 0: a zero scale stays zero


def _run(model, optimizer, steps, *, manual_term=False, zero=False):
    for k in range(steps):
        optimizer.zero_grad()
        _loss(model, k, zero).backward()
        if manual_term:
            _update_bn(model)
        optimizer.step()


@pytest.mark.parametrize("kw", [{}, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}], ids=["sgd", "nesterov"])
def test_plain_loop_matches_update_bn_bitwise(kw):
    hooked, manual = _model(), _model()
    opt_h, opt_m = _sgd(hooked, **kw), _sgd(manual, **kw)
    sparsify(hooked, opt_h, lam=LAM, proximal=False)
    _run(hooked, opt_h, 5)
    _run(manual, opt_m, 5, manual_term=True)
    _same(hooked, manual)
    assert not torch.equal(hooked[1].weight, _model()[1].weight)


def test_remove_restores_plain_training_bitwise():
    plain, removed = _model(), _model()
    opt_p, opt_r = _sgd(plain, momentum=0.9), _sgd(removed, momentum=0.9)
    handle = sparsify(removed, opt_r, lam=LAM)
    assert attached(opt_r) is handle
    handle.remove()
    assert attached(opt_r) is None
    _run(plain, opt_p, 4)
    _run(removed, opt_r, 4)
    _same(plain, removed)
    # sparse for 3 steps, then removed: the same as updateBN for 3 steps and plain steps after
    hooked, manual = _model(), _model()
    opt_h, opt_m = _sgd(hooked, momentum=0.9), _sgd(manual, momentum=0.9)
    with sparsify(hooked, opt_h, lam=LAM):
        _run(hooked, opt_h, 3)
    _run(hooked, opt_h, 2)
    _run(manual, opt_m, 3, manual_term=True)
    _run(manual, opt_m, 2)
    _same(hooked, manual)


def test_one_term_per_optimizer_and_every_scale_must_be_optimized():
    model = _model()
    optimizer = _sgd(model)
    handle = sparsify(model, optimizer, lam=LAM)
    with pytest.raises(ValueError, match="already has a sparsity term"):
        sparsify(model, optimizer, lam=LAM)
    handle.remove()
    sparsify(model, optimizer, lam=LAM).remove()  # attachable again once removed
    head_only = torch.optim.SGD(model[5].parameters(), lr=LR)
    with pytest.raises(ValueError, match=r"does not update the BN scales of 1, 4"):
        sparsify(model, head_only)


@pytest.mark.parametrize("user_unscales", [False, True], ids=["scaler-unscales", "user-unscale_-then-clip"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_grad_scaler_term_goes_on_unscaled_gradients(dtype, user_unscales):
    def loop(model, optimizer, manual):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        for k in range(4):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=dtype):
                loss = _loss(model, k)
            scaler.scale(loss).backward()
            if user_unscales:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            if manual:
                if not user_unscales:
                    scaler.unscale_(optimizer)
                _update_bn(model)
            scaler.step(optimizer)
            scaler.update()
        assert scaler.get_scale() == 2.0**10  # no step was skipped

    hooked, manual = _model(), _model()
    opt_h, opt_m = _sgd(hooked, momentum=0.9), _sgd(manual, momentum=0.9)
    sparsify(hooked, opt_h, lam=LAM)
    loop(hooked, opt_h, manual=False)
    loop(manual, opt_m, manual=True)
    _same(hooked, manual)


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
@pytest.mark.parametrize("optimizer_class", [torch.optim.SGD, torch.optim.Adam])
def test_a_step_the_grad_scaler_skips_gets_no_term(optimizer_class, fused):
    """An inf in any gradient: the scaler skips the step, and neither the term nor the proximal step runs."""
    model = _model()
    gammas = _gammas(model)
    optimizer = optimizer_class(model.parameters(), lr=LR, fused=fused)
    sparsify(model, optimizer, lam=LAM)  # subgradient for SGD, proximal for Adam
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = [p.detach().clone() for p in model.parameters()]
    g0 = [g.detach().clone() for g in gammas]
    for overflow in (True, False):
        optimizer.zero_grad()
        scaler.scale(_loss(model, 0, zero=True)).backward()
        if overflow:
            model[0].weight.grad[0, 0] = float("inf")
        scaler.step(optimizer)
        scaler.update()
        if overflow:
            assert scaler.get_scale() == 2.0**9  # skipped
            for p, p0 in zip(model.parameters(), before, strict=True):
                assert torch.equal(p.detach(), p0)
            if optimizer_class is torch.optim.SGD and not fused:
                assert all(torch.equal(g.grad, torch.zeros_like(g)) for g in gammas)  # no term added
    # the next, finite step gets the term once: γ − lr·λ·sign(γ) (SGD), soft-thresholded by lr·λ (Adam)
    for g, start in zip(gammas, g0, strict=True):
        shrunk = start - LR * LAM * torch.sign(start)
        if optimizer_class is torch.optim.Adam:
            shrunk = torch.sign(start) * (start.abs() - LR * LAM).clamp_min(0)
        torch.testing.assert_close(g.detach(), shrunk, rtol=0, atol=1e-7)


def test_fused_optimizer_under_grad_scaler_matches_the_foreach_one():
    """A fused optimizer unscales inside its step, after the pre-hook: the term is scaled to match."""
    runs = []
    for fused in (False, True):
        model = _model()
        optimizer = _sgd(model, momentum=0.9, fused=fused)
        sparsify(model, optimizer, lam=LAM)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        for k in range(4):
            optimizer.zero_grad()
            scaler.scale(_loss(model, k)).backward()
            scaler.step(optimizer)
            scaler.update()
        runs.append(model)
    for a, b in zip(_gammas(runs[0]), _gammas(runs[1]), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_term_comes_after_clipping_and_is_not_scaled_down_by_it():
    def loop(model, optimizer, manual):
        for k in range(3):
            optimizer.zero_grad()
            _loss(model, k).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
            if manual:
                _update_bn(model)
            optimizer.step()

    hooked, manual = _model(), _model()
    g0 = hooked[1].weight.detach().clone()
    opt_h, opt_m = _sgd(hooked), _sgd(manual)
    sparsify(hooked, opt_h, lam=LAM)
    loop(hooked, opt_h, manual=False)
    loop(manual, opt_m, manual=True)
    _same(hooked, manual)
    # 3 steps of the full lr·λ pull (the clipped data gradient adds at most 3·lr·1e-3); sign(γ) stays
    moved = (g0 - hooked[1].weight.detach()) * torch.sign(g0)
    nonzero = g0.abs() > 0.1
    torch.testing.assert_close(moved[nonzero], torch.full_like(moved[nonzero], 3 * LR * LAM), rtol=0,
                               atol=3 * LR * 1e-3)


def test_gradient_accumulation_gets_the_term_once_per_real_step():
    def loop(model, optimizer, manual, zero=False):
        for step in range(2):
            optimizer.zero_grad()
            for micro in range(4):
                (_loss(model, 4 * step + micro, zero) / 4).backward()
            if manual:
                _update_bn(model)
            optimizer.step()

    hooked, manual = _model(), _model()
    opt_h, opt_m = _sgd(hooked, momentum=0.9), _sgd(manual, momentum=0.9)
    sparsify(hooked, opt_h, lam=LAM)
    loop(hooked, opt_h, manual=False)
    loop(manual, opt_m, manual=True)
    _same(hooked, manual)
    model = _model()
    g0 = model[4].weight.detach().clone()
    optimizer = _sgd(model)
    sparsify(model, optimizer, lam=LAM)
    loop(model, optimizer, manual=False, zero=True)  # 8 micro-batches, 2 real steps: 2·lr·λ, not 8·lr·λ
    torch.testing.assert_close(model[4].weight.detach(), g0 - 2 * LR * LAM * torch.sign(g0), rtol=0, atol=1e-7)


def test_adam_gets_the_proximal_step_with_each_scales_own_learning_rate():
    model = _model()
    bn_params = [p for m in model.modules() if isinstance(m, nn.BatchNorm1d) for p in m.parameters()]
    others = [p for p in model.parameters() if all(p is not q for q in bn_params)]
    optimizer = torch.optim.AdamW([{"params": others}, {"params": bn_params, "lr": 0.5}], lr=1e-3,
                                  weight_decay=0.0)
    handle = sparsify(model, optimizer, lam=LAM)
    assert handle.regularizer.proximal  # chosen for an Adam-type optimizer
    g0 = [g.detach().clone() for g in _gammas(model)]
    optimizer.zero_grad()
    _loss(model, 0, zero=True).backward()  # zero gradients: Adam moves nothing, the prox shrinks by 0.5·λ
    optimizer.step()
    for g, before in zip(_gammas(model), g0, strict=True):
        expected = torch.sign(before) * (before.abs() - 0.5 * LAM).clamp_min(0)
        torch.testing.assert_close(g.detach(), expected, rtol=0, atol=1e-7)
    assert (model[1].weight[[2, 3, 4]] == 0).all()  # |γ| ≤ lr·λ: exactly zero, not just small
    assert model[1].weight[0] != 0


def test_closure_runs_backward_before_the_term():
    """Lightning and LBFGS pass a closure that runs backward inside step(): the term must follow it."""
    for positional in (False, True):
        hooked, manual = _model(), _model()
        opt_h, opt_m = _sgd(hooked, momentum=0.9), _sgd(manual, momentum=0.9)
        sparsify(hooked, opt_h, lam=LAM)
        for k in range(3):
            def closure(k=k, model=hooked, optimizer=opt_h):
                optimizer.zero_grad()
                loss = _loss(model, k)
                loss.backward()
                return loss

            loss = opt_h.step(closure) if positional else opt_h.step(closure=closure)
            assert loss is not None
        _run(manual, opt_m, 3, manual_term=True)
        _same(hooked, manual)


def test_schedule_stats_and_which_batchnorms_are_covered():
    model = _model()
    with pytest.raises(ValueError, match="needs the number of epochs"):
        sparsify(model, _sgd(model), lam=1e-2, schedule="step")
    handle = sparsify(model, _sgd(model), lam=1e-2, schedule="step", epochs=4)
    assert isinstance(handle, Sparsity)
    assert [handle.set_epoch(e) for e in range(4)] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-4])
    assert list(handle.regularizer.bns) == ["1", "4"]  # BatchNorm1d and a subclass of it
    stats = handle.stats()
    assert stats["lambda"] == pytest.approx(1e-4) and stats["gamma_min"] == 0.0
    assert stats["gamma_below_1e-2"] == pytest.approx(3 / 11)
    assert {"gamma_median", "gamma_below_1e-3", "safe_percent", "penalty"} <= set(stats)
    handle.lam = 0.5
    assert handle.regularizer.lam == 0.5
    only_first = sparsify(model, _sgd(model), exclude=["4"])
    assert list(only_first.regularizer.bns) == ["1"] and only_first.stats()["gamma_below_1e-2"] == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="matches no module"):
        sparsify(model, _sgd(model), exclude=["nothing.*"])


def test_our_train_applies_eq1_like_a_hand_written_update_bn_loop():
    """netslim's own loop (hooked term, Nesterov SGD, lr schedule) against the paper's loop written out."""
    data = toy_data(96)
    config = TrainConfig(epochs=3, batch_size=32, lr=0.05, sparsity=1e-2, bn_init=0.5, progress=False, seed=1,
                         milestones=(0.5,))
    trained = toy_model()
    train(trained, Loader(data, 32, seed=1), config)
    model = toy_model()
    for g in (m.weight for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        nn.init.constant_(g, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    scheduler = make_scheduler(optimizer, config)  # lr /10 after epoch 2 of 3
    loader = Loader(data, 32, seed=1)
    for epoch in range(3):
        loader.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x).float(), y).backward()
            _update_bn(model, lam=1e-2)
            optimizer.step()
        scheduler.step()
    _same(trained, model)


def test_wrapped_models_are_looked_through():
    model = models.create("mlp", widths=[6], input_size=(1, 2, 2), num_classes=2)
    compiled = torch.compile(model)
    handle = sparsify(compiled, torch.optim.SGD(model.parameters(), lr=LR))
    assert list(handle.regularizer.bns) == ["hidden.1"]


def _ddp_worker(rank, store, out):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        results = {}
        for name in ("hooked", "manual", "zero"):
            model = _model()
            net = nn.parallel.DistributedDataParallel(model)
            optimizer = _sgd(model, momentum=0.9 if name != "zero" else 0.0)
            if name != "manual":
                sparsify(net, optimizer, lam=LAM)
            for k in range(3 if name != "zero" else 1):
                optimizer.zero_grad()
                x, y = _batch(10 * k + rank)  # each rank its own half of the global batch
                loss = F.cross_entropy(net(x), y)
                (0 * loss if name == "zero" else loss).backward()
                if name == "manual":
                    _update_bn(model)
                optimizer.step()
            # parameters only: BN running statistics are each rank's own (DDP broadcasts them before a forward)
            results[name] = {k: v.detach().clone() for k, v in model.named_parameters()}
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
@pytest.mark.slow
def test_ddp_two_ranks_on_gloo(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    g0 = _model()[1].weight.detach()
    for r in ranks:
        for name, value in r["hooked"].items():
            assert torch.equal(value, r["manual"][name]), name  # the term after DDP's all-reduce, as updateBN
            assert torch.equal(value, ranks[0]["hooked"][name]), name  # identical on every rank
        torch.testing.assert_close(r["zero"]["1.weight"], g0 - LR * LAM * torch.sign(g0), rtol=0, atol=1e-7)
    assert not torch.equal(ranks[0]["hooked"]["1.weight"], g0)


@pytest.mark.parametrize("lam", [float("inf"), float("nan"), "1e-4", True, -1.0])
def test_a_lambda_that_is_not_a_finite_number_is_one_line(lam):
    """λ = inf used to send every γ to -inf; a string λ failed deep inside with a TypeError."""
    model = toy_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    with pytest.raises(ValueError, match="λ must be >= 0 and a finite number"):
        sparsify(model, optimizer, lam=lam)
    sparsity = sparsify(model, optimizer, lam=LAM)
    with pytest.raises(ValueError, match="λ must be >= 0 and a finite number"):
        sparsity.lam = lam
    assert sparsity.lam == LAM


def test_an_optimizer_that_is_not_one_and_a_negative_epoch_are_named():
    model = toy_model()
    with pytest.raises(ValueError, match="torch.optim.Optimizer.*'sgd'"):
        sparsify(model, "sgd")
    sparsity = sparsify(model, torch.optim.SGD(model.parameters(), lr=LR), lam=LAM, schedule="linear", epochs=10)
    with pytest.raises(ValueError, match="epoch must be an integer >= 0") as e:
        sparsity.set_epoch(-5)
    assert "λ" not in str(e.value)


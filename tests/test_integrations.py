"""Sparsity in trainers netslim did not write: Lightning (the callback) and timm (sparsify after its optimizer).

Each run is compared with the same training written out by hand with the official port's ``updateBN``
(γ.grad += λ·sign(γ) right before the optimizer step): bitwise the same weights. Skipped where the
trainer is not installed.
"""

import importlib
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netslim import sparsify
from netslim.sparsity import attached
from netslim.testing import official_update_bn

LAM, LR = 0.05, 0.1


def _lightning():
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    pytest.skip("neither lightning nor pytorch_lightning is installed")


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        net[1].weight.copy_(torch.linspace(-0.5, 0.5, 8))
    return net


def _batches(n=64, size=8):
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=size, shuffle=False)


def _update_bn(net, lam=LAM):
    official_update_bn(net, lam)


def _fit_lightning(pl, callbacks, epochs, accumulate=1, clip=None):
    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)

    module = Module()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, callbacks=callbacks, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accumulate_grad_batches=accumulate, gradient_clip_val=clip, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=_batches())
    return module.net, trainer


def _by_hand(epochs, accumulate=1, clip=None):
    """What the Lightning run must equal: the same loop, written out, with updateBN before each step."""
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
    for _ in range(epochs):
        for k, (x, y) in enumerate(_batches()):
            (F.cross_entropy(net(x), y) / accumulate).backward()
            if (k + 1) % accumulate:
                continue
            if clip is not None:
                nn.utils.clip_grad_norm_(net.parameters(), clip)
            _update_bn(net)
            optimizer.step()
            optimizer.zero_grad()
    return net


@pytest.mark.parametrize("accumulate, clip", [(1, None), (2, 0.5)], ids=["plain", "accumulate-and-clip"])
def test_lightning_callback_trains_like_update_bn(accumulate, clip):
    pl = _lightning()
    from netslim.integrations.lightning import SparsityCallback

    callback = SparsityCallback(lam=LAM)
    net, trainer = _fit_lightning(pl, [callback], epochs=2, accumulate=accumulate, clip=clip)
    reference = _by_hand(epochs=2, accumulate=accumulate, clip=clip)
    for (name, a), b in zip(net.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert callback.sparsity is None and attached(trainer.optimizers[0]) is None  # removed when training ended
    assert trainer.callback_metrics["sparsity/lambda"] == pytest.approx(LAM)
    assert {"sparsity/gamma_median", "sparsity/gamma_below_1e-2", "sparsity/safe_percent"} <= set(
        trainer.callback_metrics)


def test_lightning_callback_follows_the_lambda_schedule():
    pl = _lightning()
    from netslim.integrations.lightning import SparsityCallback

    seen = []

    class Watch(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(callback.sparsity.lam)

    callback = SparsityCallback(lam=1e-2, schedule="step")
    _fit_lightning(pl, [callback, Watch()], epochs=4)
    assert seen == pytest.approx([1e-2, 1e-2, 1e-3, 1e-4])


def test_timm_model_and_optimizer_with_native_scaler():
    """timm's way: create_model, create_optimizer_v2 (BN scales in a no-decay group), NativeScaler with
    clipping; sparsify after the optimizer is made. BatchNormAct2d counts as a BN."""
    timm = pytest.importorskip("timm")
    from timm.optim import create_optimizer_v2
    from timm.utils import NativeScaler

    def run(manual):
        torch.manual_seed(0)
        model = timm.create_model("test_efficientnet", num_classes=3)
        optimizer = create_optimizer_v2(model, "sgd", lr=LR, weight_decay=1e-4)
        if not manual:
            handle = sparsify(model, optimizer, lam=LAM)
            assert len(handle.regularizer.bns) == sum(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                      for m in model.modules()) > 0
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        native = NativeScaler(device="cpu")
        native._scaler = scaler
        g = torch.Generator().manual_seed(1)
        for _ in range(2):
            x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 3, (4,), generator=g)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            if manual:  # NativeScaler's order, with updateBN where the hook puts the term
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                _update_bn(model)
                scaler.step(optimizer)
                scaler.update()
            else:
                native(loss, optimizer, clip_grad=1.0, parameters=model.parameters())
        return model

    hooked, manual = run(manual=False), run(manual=True)
    for (name, a), b in zip(hooked.state_dict().items(), manual.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_lightning_callback_says_when_a_fixed_lambda_cannot_work_and_chooses_lambda_for_a_target():
    pl = _lightning()
    from netslim.integrations.lightning import SparsityCallback

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit_lightning(pl, [SparsityCallback(lam=1e-5)], epochs=2)
    said = [str(w.message) for w in caught]
    assert sum("can move a BN scale by at most" in m for m in said) == 1  # at the start
    assert sum("sparsity is not emerging" in m for m in said) == 1  # and half-way
    seen = []

    class Watch(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append((callback.sparsity.steps, len(callback.sparsity.trajectory), callback.sparsity.lam))

    callback = SparsityCallback(target=0.5)
    net, trainer = _fit_lightning(pl, [callback, Watch()], epochs=4, accumulate=2)
    # planned over the trainer's optimizer steps (8 batches, accumulated in pairs, 4 epochs) and checked each one
    assert [(steps, checks) for steps, checks, _ in seen] == [(16, 1 + 4 * k) for k in (1, 2, 3, 4)]
    assert all(lam > 0 for _, _, lam in seen)
    assert trainer.callback_metrics["sparsity/target"] == pytest.approx(0.5)


def test_the_lightning_callback_without_lightning_is_one_clear_import_error(monkeypatch):
    import sys
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "netslim.integrations.lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: "not installed"
    monkeypatch.delitem(sys.modules, "netslim.integrations.lightning")
    with pytest.raises(ImportError, match=r"needs Lightning: pip install lightning") as e:
        importlib.import_module("netslim.integrations.lightning")
    assert e.value.__suppress_context__ and e.value.__cause__ is None  # one error, not a chain of two

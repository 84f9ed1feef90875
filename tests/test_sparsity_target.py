"""λ chosen for a target share of prunable channels, and warnings when a fixed λ cannot work.

The problem: scikit-learn's digits with an MLP whose hidden layers have BN, SGD with momentum 0.9 at lr
0.1 divided by 10 at 50% and 75% of the run (the paper's schedule), 10 epochs of 29 steps. Over that
schedule the L1 term moves a γ by at most λ·Σlr/(1−μ), under 1500λ: the paper's λ = 1e-4 cannot move a
γ of 1 by a sixth of the way, so no channel becomes prunable.
"""

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netslim import recalibrate_bn, sparsify
from netslim.sparsity_target import TargetController, reach, reach_warning

EPOCHS, BATCH = 10, 64


def _digits():
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    return torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 128),
                         nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10))


def _fit(epochs=EPOCHS, lr=0.1, set_epochs=True, **sparsity):
    """Train the MLP in a plain loop with the sparsity term attached; (model, handle, warnings, accuracy)."""
    x, y = _digits()
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [epochs // 2, epochs * 3 // 4], 0.1)
    per_epoch = (len(x) + BATCH - 1) // BATCH
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        handle = sparsify(model, optimizer, **sparsity)
        for epoch in range(epochs):
            if set_epochs:
                handle.set_epoch(epoch)
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
            for k in range(per_epoch):
                batch = order[k * BATCH:(k + 1) * BATCH]
                loss = F.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    return model, handle, [str(w.message) for w in caught if "sparsity" in str(w.message)], accuracy


def _share(model, below=1e-2):
    gammas = torch.cat([m.weight.detach().abs() for m in model.modules() if isinstance(m, nn.BatchNorm1d)])
    return (gammas < below).float().mean().item()


STEPS = EPOCHS * 29


def test_a_target_is_reached_where_the_papers_lambda_leaves_no_channel_prunable():
    fixed, _, _, _ = _fit(lam=1e-4, epochs=EPOCHS)
    assert _share(fixed) == 0.0
    for target in (0.5, 0.8):
        model, handle, said, accuracy = _fit(target=target, steps=STEPS, epochs=EPOCHS)
        assert target - 0.05 <= _share(model) <= target + 0.1, (target, _share(model))
        assert accuracy > 0.9, accuracy  # the channels kept still classify the digits
        assert not said, said
        lams = [lam for _, lam, _ in handle.trajectory]
        assert len(lams) >= 90 and max(lams) / min(lams) > 3  # λ was chosen along the way, not fixed


def test_a_fixed_lambda_that_cannot_work_is_said_at_the_start_with_the_least_that_could():
    _, _, said, _ = _fit(lam=1e-4, steps=STEPS, epochs=EPOCHS)
    start = [m for m in said if "can move a BN scale by at most" in m]
    assert len(start) == 1 and "target=0.5" in start[0], said
    least = float(re.search(r"λ ≥ ([0-9.e-]+) at the very least", start[0]).group(1))
    # the pull of that λ over the planned steps at the starting lr and momentum moves a median γ (1.0) to 0
    assert reach(least, 0.1, 1 / (1 - 0.9), STEPS) == pytest.approx(1.0, rel=0.05)
    stalled = [m for m in said if "not emerging" in m]
    assert len(stalled) == 1 and "half-way" in stalled[0]  # once, half-way through
    _, _, said, _ = _fit(lam=least, steps=STEPS, epochs=EPOCHS)
    assert not [m for m in said if "can move" in m]


def test_without_a_planned_length_the_reach_is_said_after_the_first_epoch():
    _, handle, said, _ = _fit(lam=1e-4, epochs=4)  # epochs only through set_epoch, no steps=
    assert any("can move a BN scale" in m and "one epoch of 29 optimizer steps" in m for m in said), said
    assert handle.steps_per_epoch == 29


def test_a_loop_that_only_steps_gets_the_half_way_warning_from_the_optimizer_hooks():
    _, _, said, _ = _fit(lam=1e-4, steps=STEPS, set_epochs=False, warn=True)
    assert sum("not emerging" in m for m in said) == 1, said


@pytest.mark.parametrize("kwargs,why", [({"target": 0.5}, "steps=N"), ({"target": 1.5, "steps": 10}, "target"),
                                        ({"target": 0.5, "steps": 10, "kind": "polarization"}, "fixed λ"),
                                        ({"target": 0.5, "steps": 10, "schedule": "step", "epochs": 2}, "schedule"),
                                        ({"target": 0.5, "steps": 0}, "steps")])
def test_a_target_without_what_it_needs_is_one_clear_error(kwargs, why):
    model = _mlp()
    with pytest.raises(ValueError, match=why):
        sparsify(model, torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def test_reach_counts_momentum_and_the_warning_is_silent_when_lambda_can_work():
    assert reach(1e-4, 0.01, 1 / (1 - 0.937), 94) == pytest.approx(1e-4 * 0.01 * 94 / 0.063)
    assert reach_warning(1e-4, 0.01, 15.9, 94, 1.0, "94 steps") is not None
    assert reach_warning(0.5, 0.01, 15.9, 94, 1.0, "94 steps") is None


def test_the_controller_state_round_trips_and_ignores_nonsense():
    controller = TargetController(0.5, steps=100)
    controller.update(0.1, 10, torch.linspace(0.01, 1, 50), 0.1, 10.0)
    copy = TargetController(0.5, steps=100)
    copy.load_state_dict(controller.state_dict())
    assert copy.state_dict() == controller.state_dict()
    copy.load_state_dict({"lam": float("nan"), "history": [["x"]], "scale": -1})
    assert copy.lam is None and copy.history == [] and copy.scale is None


# -- BN re-estimation on the user's own data --

def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))


@pytest.mark.parametrize("wrap", [lambda x: x, lambda x: (x, torch.zeros(len(x))), lambda x: {"img": x}],
                         ids=["tensors", "pairs", "mappings"])
def test_recalibration_from_a_plain_iterable_gives_the_statistics_of_its_batches(wrap):
    net = _bn_net().eval()
    batches = [torch.randn(8, 4) * 3 + 1 for _ in range(5)]
    recalibrate_bn(net, [wrap(b) for b in batches], batches=None)
    with torch.no_grad():
        features = net[0](torch.cat(batches))
    torch.testing.assert_close(net[1].running_mean, features.mean(0), rtol=1e-4, atol=1e-5)
    assert not any(m.training for m in net.modules())  # its own mode, eval, restored
    assert net.recalibrated_batches == 5


def test_asking_for_more_batches_than_the_data_hold_says_how_many_were_used():
    net = _bn_net()
    with pytest.warns(UserWarning, match="re-estimated on 3 batches: the data hold 3, not the 10"):
        recalibrate_bn(net, [torch.randn(8, 4) for _ in range(3)], batches=10)
    with pytest.raises(ValueError, match="no batch"):
        recalibrate_bn(net, [], batches=10)
    with pytest.raises(ValueError, match="input keys"):
        recalibrate_bn(net, [{"labels": torch.zeros(3)}], batches=1)


# -- the command line and the training loop --

def test_the_cli_trains_for_a_target_and_logs_the_lambda_trajectory(tmp_path, capsys):
    import json

    from netslim.cli import main

    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    assert main(["train", "--model", "mlp", "--dataset", "digits", "--sparsity", "auto", "--target-sparsity", "0.5",
                 "--bn-init", "0.5", "--epochs", "6", "--no-progress", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["target_sparsity"] == 0.5 and r["sparsity_min"] <= r["sparsity"] <= r["sparsity_max"]
               for r in records)
    assert 0.4 <= records[-1]["gamma_below_1e-2"] <= 0.65, records[-1]["gamma_below_1e-2"]
    assert "not emerging" not in capsys.readouterr().err
    assert main(["train", "--model", "mlp", "--dataset", "digits", "--sparsity", "1e-4", "--target-sparsity", "2",
                 "--epochs", "1", "--out", str(tmp_path / "bad")]) == 2
    assert "share in (0, 1)" in capsys.readouterr().err and not (tmp_path / "bad" / "last.pt").exists()


def test_the_half_way_advice_never_asks_for_less_pull_than_is_applied():
    from netslim.sparsity_target import stall_warning

    weak = stall_warning(0.0, 1e-4, 0.01, 16.0, 1.0, 47, 1e-2, proximal=False)
    assert "could still move" in weak and "λ ≥ 0.13" in weak
    strong = stall_warning(0.02, 0.3, 0.004, 16.0, 0.02, 47, 1e-2, proximal=False)  # YOLOv8n at λ = 0.3
    assert "pulled down together" in strong and "λ ≥" not in strong

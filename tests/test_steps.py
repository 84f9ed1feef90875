"""The training step: eager, and replayed as a captured graph (the GPU path, its bookkeeping tested on the CPU).

CUDA-graph capture itself needs a GPU. Here the capture backend is replaced by one that replays by
running the captured function again (``RerunBackend``): that checks everything around the capture
(static buffers, re-capture when lr or λ change, eager steps for other shapes, gradients kept in the
graph's buffers, fp16 with a GradScaler, failures) against the eager loop, bitwise.
"""

from unittest import mock

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import netslim.steps as steps
from netslim import models, sparsify
from netslim.data import Dataset, Loader, load_digits
from netslim.train import TrainConfig, train

from .test_train import _data as toy_data
from .test_train import _model

pytestmark = pytest.mark.filterwarnings("ignore:sparsity is not emerging")  # short runs on toy data


def _data(n=70, seed=0):
    return toy_data(n, seed)  # 70 samples: batches of 32 end with a partial batch of 6


def _config(**kw):
    base = dict(epochs=8, batch_size=32, lr=0.05, sparsity=1e-3, bn_init=0.5, progress=False, seed=1, grad_clip=5.0)
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def rerun(monkeypatch):
    """Make ``cuda_graph=True`` on the CPU use the re-running backend; yields the backends made."""
    made = []

    def backend(device):
        made.append(steps.RerunBackend(device))
        return made[-1]

    monkeypatch.setattr(steps, "graph_backend", backend)
    return made


def _same_weights(a, b):
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k


class CountlessReplay(steps.RerunBackend):
    """Replays as a CUDA graph does for the sparsity term's bookkeeping: the step's device work runs, but the
    optimizer hook's Python sees a capture (it does not run on a real replay), so nothing is counted there."""

    reruns = False

    def replay(self) -> None:
        with mock.patch("torch.cuda.is_available", return_value=True), \
                mock.patch("torch.cuda.is_current_stream_capturing", return_value=True):
            self.fn()


def test_replays_count_towards_a_targets_schedule_as_eager_steps_do(monkeypatch):
    """λ for a target is corrected from the steps counted: replays of a captured step, where no Python
    hook runs, are counted by the graphed step itself, so λ and the weights follow the eager run."""
    made = []
    monkeypatch.setattr(steps, "graph_backend", lambda device: made.append(CountlessReplay(device)) or made[-1])
    data = _data()
    eager, graphed = _model(), _model()
    a = train(eager, Loader(data, 32, seed=1), _config(sparsity="auto"))
    b = train(graphed, Loader(data, 32, seed=1), _config(sparsity="auto", cuda_graph=True))
    assert made and made[0].captures > 3  # λ changed along the way: new captures
    assert [r["sparsity"] for r in a["history"]] == [r["sparsity"] for r in b["history"]]
    _same_weights(eager, graphed)


@pytest.mark.parametrize("kw", [{}, {"sparsity_schedule": "warmup"}, {"amp": "fp16"}, {"optimizer": "adam"}],
                         ids=["sgd", "lambda-schedule", "fp16-gradscaler", "adam-proximal"])
def test_graphed_step_trains_exactly_like_the_eager_loop(rerun, kw):
    data = _data()  # 70 samples, batch 32: every epoch ends with a partial batch of 6
    eager, graphed = _model(), _model()
    a = train(eager, Loader(data, 32, seed=1), _config(**kw))
    b = train(graphed, Loader(data, 32, seed=1), _config(cuda_graph=True, **kw))
    _same_weights(eager, graphed)
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    assert [r["train_accuracy"] for r in a["history"]] == [r["train_accuracy"] for r in b["history"]]
    backend = rerun[0]
    # one capture per phase of constant (lr, λ): lr /10 at epochs 4 and 6; the warm-up schedule changes
    # λ every epoch up to 10% of 8 epochs (epoch 1 only), so both give 3 phases here
    assert backend.captures == 3


def test_replayed_steps_and_the_partial_batch_are_counted(rerun):
    data = _data(70)
    model = _model()
    config = _config(epochs=2, cuda_graph=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsify(model, optimizer, 1e-3)
    eager = steps.EagerStep(model, model, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                            torch.device("cpu"), None)
    step = steps.make_step(eager, config.cuda_graph)
    assert isinstance(step, steps.GraphedStep)
    totals = torch.zeros(2, dtype=torch.float64)
    loader = Loader(data, 32, seed=1)
    for _ in range(2):
        for x, y in loader:
            step(x, y, totals)
        step.end_epoch()
    # 2 epochs x (32, 32, 6): 3 warm-up steps (all of epoch 1), then epoch 2's two full batches replayed
    # (one capture) and its partial batch eager
    assert step.warm == steps.WARMUP_STEPS and step.replays == 2 and rerun[0].captures == 1
    assert eager.keep_grads  # gradients now live in the graph's buffers: eager steps zero them in place
    assert totals[0] > 0 and 0 <= totals[1] <= 140


def _eager_and_asked_for_graphs_agree(epochs: int, warning: str) -> None:
    """Train twice, eagerly and with cuda_graph=True (which must warn ``warning``): the same weights."""
    data = _data()
    eager, graphed = _model(), _model()
    train(eager, Loader(data, 32, seed=1), _config(epochs=epochs))
    with pytest.warns(UserWarning, match=warning):
        train(graphed, Loader(data, 32, seed=1), _config(epochs=epochs, cuda_graph=True))
    _same_weights(eager, graphed)


def test_capture_failure_warns_once_and_training_continues_eagerly(monkeypatch):
    class Broken(steps.RerunBackend):
        def capture(self, fn):
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(steps, "graph_backend", lambda device: Broken(device))
    _eager_and_asked_for_graphs_agree(3, "capture of the training step failed.*continues eagerly")


def test_shapes_that_vary_between_steps_are_named_and_run_eagerly(rerun):
    data = _data(200)

    class Ragged:  # batches of 32, 20, 32, 20, ...: not a fixed shape
        def __iter__(self):
            start, sizes = 0, [32, 20] * 10
            loader = Loader(data, 200, train=False)
            x, y = next(iter(loader))
            for size in sizes:
                if start + size > 200:
                    return
                yield x[start:start + size], y[start:start + size]
                start += size

    with pytest.warns(UserWarning, match="steps of this epoch had another shape.*ran eagerly"):
        train(_model(), Ragged(), _config(epochs=1, cuda_graph=True))


def test_cuda_graph_without_cuda_says_so_and_trains_eagerly():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _eager_and_asked_for_graphs_agree(2, "needs a CUDA device; training on cpu runs eagerly")


class _HostTraffic(TorchDispatchMode):
    """Counts host synchronisations (``.item()``, ``bool(tensor)``: ``_local_scalar_dense``) and copies
    from the CPU onto the (meta) device."""

    def __init__(self):
        super().__init__()
        self.syncs = self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" for t in ins) and any(t.device.type == "meta" for t in outs):
            self.copies += 1
        return out


@pytest.mark.parametrize("kind", ["l1", "polarization"])
def test_an_epoch_on_a_device_makes_no_host_sync_and_no_copy_per_step(kind):
    """Run the Loader and the whole step (L1 term, clipping, SGD) on the meta device, where any host
    sync or host-to-device copy shows up as an op: per epoch a fixed few copies, per step none."""
    g = torch.Generator().manual_seed(0)
    data = Dataset(torch.randint(0, 255, (256, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(256) % 10,
                   10, (0.5,) * 3, (0.2,) * 3, "toy")
    device = torch.device("meta")
    model = models.create("vgg11", widths=[8] * 8).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sparsify(model, optimizer, 1e-4, kind)
    step = steps.EagerStep(model, model, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                           device, None, grad_clip=1.0)
    counts = []
    for batch_size in (16, 64):  # 16 and 4 steps
        loader = Loader(data, batch_size, train=True, augment="cifar", device=device)
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        with _HostTraffic() as traffic:
            for x, y in loader:
                step(x, y, totals)
        counts.append((traffic.syncs, traffic.copies))
    assert counts[0] == counts[1] and counts[0][0] == 0  # independent of the number of steps; no sync at all
    assert counts[0][1] <= 3  # the epoch's order and augmentation draws, moved once


def _cnn():
    return models.create("preresnet20", in_channels=1, input_size=8, num_classes=10)


@pytest.mark.slow
def test_bf16_autocast_loss_curve_matches_fp32_within_seed_noise():
    """Same training semantics at lower precision: over ~300 steps on real digits, the per-epoch loss
    curve with bf16 autocast stays as close to fp32's as two fp32 runs with different data orders are."""
    data = load_digits(split="train")
    curves = {}
    for name, amp, seed in (("fp32", "off", 0), ("fp32-other-order", "off", 1), ("bf16", "bf16", 0)):
        torch.manual_seed(0)
        model = _cnn()
        config = TrainConfig(epochs=7, batch_size=32, lr=0.05, sparsity=1e-4, bn_init=0.5, amp=amp, seed=seed,
                             progress=False, milestones=(1.0,))
        history = train(model, Loader(data, 32, seed=seed), config)["history"]
        curves[name] = [r["train_loss"] for r in history]
    steps_run = 7 * -(-len(data) // 32)
    assert steps_run >= 300
    noise = max(abs(a - b) for a, b in zip(curves["fp32"], curves["fp32-other-order"], strict=True))
    gap = max(abs(a - b) for a, b in zip(curves["fp32"], curves["bf16"], strict=True))
    assert curves["bf16"][-1] < 0.5 * curves["bf16"][0]  # it learns
    assert gap <= max(2 * noise, 0.02), (curves, noise, gap)


def test_compiled_forward_is_compiled_once_through_warm_up_capture_and_replays(rerun, monkeypatch):
    """Warm-up, capture and replays call the compiled model under the same autocast settings: one compilation
    (a recompile would happen inside the CUDA-graph capture, where it cannot run)."""
    import netslim.train as train_module

    compiled = []

    def counting_backend(gm, example_inputs):
        compiled.append(len(example_inputs))
        return gm.forward

    monkeypatch.setattr(train_module, "_compiled",
                        lambda net, device, graphed: torch.compile(net, backend=counting_backend, dynamic=False))
    torch._dynamo.reset()
    data = _data(64)  # two full batches per epoch: no partial batch
    train(_model(), Loader(data, 32, seed=1), _config(epochs=3, amp="bf16", compile=True, cuda_graph=True))
    assert rerun[0].captures == 2 and len(compiled) == 1  # lr /10 at epoch 2 of 3: two captures, one compile


def test_resumed_adam_is_made_capturable():
    from netslim.train import _make_capturable

    model = _model()
    plain = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 1, 4, 4)).sum().backward()
    plain.step()
    resumed = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    resumed.load_state_dict(plain.state_dict())
    assert resumed.param_groups[0]["capturable"] is False  # what load_state_dict restores
    _make_capturable(resumed, torch.device("cpu"))
    assert resumed.param_groups[0]["capturable"] is True
    steps_ = [s["step"] for s in resumed.state.values()]
    assert steps_ and all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 and float(t) == 1 for t in steps_)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    _make_capturable(sgd, torch.device("cpu"))
    assert "capturable" not in sgd.param_groups[0]

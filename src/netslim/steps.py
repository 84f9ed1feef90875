"""One optimization step of the training loop: run op by op, or captured once as a CUDA graph and replayed.

A step is: forward under autocast, cross-entropy (plus distillation), backward, unscaling (fp16 with a
GradScaler), gradient clipping, the optimizer, and the epoch's loss and accuracy sums, which stay on
the device (no host synchronisation per step). The sparsity term of the paper's Eq. 1 is not called
here: it is attached to the optimizer (:func:`netslim.sparsify`), whose step hooks add it to the
*unscaled* gradients right before the update and run the proximal/clamp step right after, as in any
other training loop.

:class:`EagerStep` runs that Python code. :class:`GraphedStep` runs the *same* code under
``torch.cuda.graph`` once per (batch shape, learning rates, λ) and then replays it: one launch per
step instead of hundreds, with every scalar (lr, λ, momentum) baked into the graph, which is why a
change of lr or λ (at an epoch boundary) triggers a new capture; the optimizer's sparsity hooks run
inside the capture (pure tensor ops). A batch of another shape (the last, partial batch of an epoch)
runs eagerly on the same parameters, gradients and optimizer state, so no sample is skipped and
training means the same on CPU and GPU. With an enabled GradScaler, whose ``step`` reads the inf
check on the host, only forward and backward are captured; the update stays eager. Anything capture
cannot handle (a host sync inside the model, data-dependent shapes) makes the capture fail: a
one-line warning, and training continues eagerly from that batch.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .sparsity import attached

WARMUP_STEPS = 3  # eager steps before the first capture (lazy init of cuDNN/cuBLAS, optimizer state)


def autocast(device: torch.device, dtype: torch.dtype | None, cache: bool = True):
    """Autocast to ``dtype`` (None: off). Inside a CUDA-graph capture the weight-cast cache must be off."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


class CompiledForward:
    """``torch.compile``'d model call for the batch shape it first sees; the eager model otherwise.

    Other shapes (the epoch's last partial batch) go to the eager module, so the compiled code (and
    its CUDA graphs under ``mode="reduce-overhead"``) never recompiles. If compilation fails, one
    warning, and eager from then on.
    """

    def __init__(self, eager: nn.Module, compiled: Callable) -> None:
        self.eager, self.compiled, self.shape = eager, compiled, None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.eager(images)
        if self.shape is None:
            self.shape = images.shape
        if images.shape != self.shape:
            return self.eager(images)
        try:
            return self.compiled(images)
        except Exception as e:  # dynamo/inductor raise many types; eager is always a safe fallback
            warnings.warn(f"torch.compile failed on this model ({type(e).__name__}: {_first_line(e)}); "
                          "training continues in eager mode", stacklevel=2)
            self.compiled = None
            return self.eager(images)


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0][:200]


class EagerStep:
    """The training step, op by op (the CPU path, and every GPU step that is not replayed)."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], model: nn.Module,
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 device: torch.device, precision: torch.dtype | None, *,
                 grad_clip: float | None = None, teacher: nn.Module | None = None, distill: float = 0.0,
                 temperature: float = 4.0) -> None:
        self.forward, self.model, self.optimizer, self.scaler = forward, model, optimizer, scaler
        self.device, self.precision, self.grad_clip = device, precision, grad_clip
        self.teacher, self.distill, self.temperature = teacher, distill, temperature
        self.keep_grads = False  # True once a graph owns the gradient buffers: zero them instead of freeing
        # autocast's weight-cast cache; off under CUDA graphs, for every step alike: torch.compile guards on
        # the flag and would otherwise recompile inside the capture
        self.cache = True

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, totals: torch.Tensor) -> None:
        """One step on a batch; adds (loss·n, correct) to ``totals`` (float64, on the device)."""
        self.optimizer.zero_grad(set_to_none=not self.keep_grads)
        self.forward_backward(images, labels, totals)
        self.update()

    def forward_backward(self, images: torch.Tensor, labels: torch.Tensor, totals: torch.Tensor) -> None:
        with autocast(self.device, self.precision, self.cache):
            logits = self.forward(images)
            loss = F.cross_entropy(logits.float(), labels)
            if self.teacher is not None and self.distill > 0:
                loss = distillation_loss(loss, logits, self.teacher, images, self.distill, self.temperature)
        self.scaler.scale(loss).backward()
        totals[0] += loss.detach().double() * labels.shape[0]
        totals[1] += (logits.detach().argmax(1) == labels).sum()

    def update(self) -> None:
        """Unscale, clipping, optimizer (README: order of operations)."""
        self.scaler.unscale_(self.optimizer)  # a no-op without fp16
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        # skips the step when fp16 gradients overflowed; the optimizer's hooks add the sparsity term (on the
        # unscaled, clipped gradients) and run the proximal step, only for a step that happens
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def end_epoch(self) -> None:
        """Nothing to report for the eager step."""


class CudaGraphBackend:
    """Capture and replay with ``torch.cuda.CUDAGraph``; warm-up on a side stream, as PyTorch requires."""

    reruns = False  # a replay runs the recorded kernels only: no Python, no optimizer hooks

    def __init__(self, device: torch.device) -> None:
        # A high-priority stream: drawn from another pool than torch.cuda.Stream()'s 32 rotating ones, so no
        # other stream (a StreamLoader's) can alias the capturing one and have its work recorded
        self.stream = torch.cuda.Stream(device, priority=-1)
        self.graph: torch.cuda.CUDAGraph | None = None

    def warmup(self, fn: Callable[[], None]) -> None:
        current = torch.cuda.current_stream(self.stream.device)  # the training device's, not cuda:0's
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            fn()
        current.wait_stream(self.stream)

    def capture(self, fn: Callable[[], None]) -> None:
        self.graph = None  # free the previous graph's memory pool first
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (the StreamLoader's decoder: pinned buffers, nvJPEG) may use CUDA meanwhile
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            fn()
        self.graph = graph

    def replay(self) -> None:
        self.graph.replay()


class RerunBackend:
    """Replays by running the captured function again: the static-buffer protocol of :class:`GraphedStep`
    without CUDA (so its bookkeeping is tested on machines without a GPU; see tests/test_steps.py)."""

    reruns = True  # a replay runs the Python of the step again (the optimizer's hooks included)

    def __init__(self, device: torch.device | None = None) -> None:
        self.fn: Callable[[], None] | None = None
        self.captures = 0

    def warmup(self, fn: Callable[[], None]) -> None:
        fn()

    def capture(self, fn: Callable[[], None]) -> None:
        self.fn, self.captures = fn, self.captures + 1

    def replay(self) -> None:
        self.fn()


class GraphedStep:
    """:class:`EagerStep` captured as one CUDA graph per (batch shape, lr, λ) and replayed.

    The first ``WARMUP_STEPS`` steps run eagerly (warm-up); then the step is captured on static input
    buffers; each later batch of that shape is copied into them and the graph replayed. Batches of
    other shapes run eagerly. The gradients live in the graph's memory from the first capture on, and
    eager steps zero them in place rather than freeing them.
    """

    def __init__(self, step: EagerStep, backend: CudaGraphBackend | RerunBackend) -> None:
        self.step, self.backend, self.model = step, backend, step.model
        step.cache = False
        self.whole = not step.scaler.is_enabled()  # GradScaler.step syncs with the host: capture fwd/bwd only
        self.static: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.key: tuple | None = None
        self.warm = 0
        self.failed = False
        self.replays = 0
        self.eager_steps = 0  # steps of the current epoch that could not be replayed (other shapes)

    @staticmethod
    def _signature(images: torch.Tensor, labels: torch.Tensor) -> tuple:
        return images.shape, images.stride(), images.dtype, labels.shape, labels.dtype

    def _scalars(self) -> tuple:
        sparsity = attached(self.step.optimizer)  # its hooks run inside the capture, with λ baked in
        return (tuple(g["lr"] for g in self.step.optimizer.param_groups), sparsity.lam if sparsity else None)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, totals: torch.Tensor) -> None:
        with warnings.catch_warnings():  # capturable Adam warns when it steps eagerly: here that is by design
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            self._run(images, labels, totals)

    def _run(self, images: torch.Tensor, labels: torch.Tensor, totals: torch.Tensor) -> None:
        if self.failed:
            return self.step(images, labels, totals)
        if self.warm < WARMUP_STEPS:
            self.warm += 1
            return self.backend.warmup(lambda: self.step(images, labels, totals))
        signature = self._signature(images, labels)
        if self.static is not None and signature != self._signature(*self.static[:2]):
            self.eager_steps += 1
            return self.step(images, labels, totals)
        if self.static is None or self._scalars() != self.key:
            if not self._capture(images, labels):
                return self.step(images, labels, totals)
        static_images, static_labels, static_totals = self.static
        static_images.copy_(images)
        static_labels.copy_(labels)
        self.backend.replay()
        self.replays += 1
        if not self.whole:
            self.step.update()
        elif not self.backend.reruns and (sparsity := attached(self.step.optimizer)) is not None:
            sparsity.count_step()  # the graph replays the update without the optimizer's hooks
        totals += static_totals

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> bool:
        static = (images.clone(), labels.clone(), torch.zeros(2, dtype=torch.float64, device=images.device))

        def captured() -> None:
            static[2].zero_()
            self.step.optimizer.zero_grad(set_to_none=True)  # backward allocates the gradients in the graph
            self.step.forward_backward(static[0], static[1], static[2])
            if self.whole:
                self.step.update()

        try:
            self.backend.capture(captured)
        except Exception as e:  # capture raises many types (CUDA errors, dynamo); eager is always safe
            cause = e.__context__ or e  # capture_end's "invalidated" error hides what broke the capture
            warnings.warn(f"CUDA-graph capture of the training step failed ({type(cause).__name__}: "
                          f"{_first_line(cause)}); training continues eagerly (a host sync or a data-dependent "
                          "shape in the model?)", stacklevel=3)
            self.failed, self.static = True, None
            self.step.optimizer.zero_grad(set_to_none=True)  # nothing ran; drop gradients allocated in capture
            self.step.keep_grads = False
            return False
        self.static, self.key = static, self._scalars()
        self.step.keep_grads = True
        return True

    def end_epoch(self) -> None:
        """Say so when batches of unexpected shapes ran eagerly (more than the last partial batch)."""
        if self.eager_steps > 1:
            warnings.warn(f"{self.eager_steps} steps of this epoch had another shape than the captured one and ran "
                          "eagerly (CUDA graphs replay one shape); give the batches a fixed shape", stacklevel=3)
        self.eager_steps = 0


def graph_backend(device: torch.device) -> CudaGraphBackend | None:
    """The capture backend for ``device``: CUDA graphs on a CUDA device, None elsewhere."""
    return CudaGraphBackend(device) if device.type == "cuda" else None


def make_step(step: EagerStep, cuda_graph: bool, distributed: bool = False) -> EagerStep | GraphedStep:
    """``step`` itself, or it wrapped in a :class:`GraphedStep` when ``cuda_graph`` can be honoured."""
    if not cuda_graph:
        return step
    if distributed:
        warnings.warn("--cuda-graph is not supported with DistributedDataParallel in netslim; training eagerly",
                      stacklevel=2)
        return step
    backend = graph_backend(step.device)
    if backend is None:
        warnings.warn(f"--cuda-graph needs a CUDA device; training on {step.device} runs eagerly", stacklevel=2)
        return step
    return GraphedStep(step, backend)


def distillation_loss(loss: torch.Tensor, logits: torch.Tensor, teacher: nn.Module, images: torch.Tensor,
                      weight: float, temperature: float) -> torch.Tensor:
    """(1 − α)·CE + α·T²·KL(teacher ‖ student) at temperature T (Hinton et al. 2015)."""
    with torch.no_grad():
        target = teacher(images)
    if target.shape != logits.shape:
        raise ValueError(f"the teacher's output {tuple(target.shape)} does not match the student's "
                         f"{tuple(logits.shape)}; distil from a model of the same task")
    t = temperature
    kl = F.kl_div(F.log_softmax(logits.float() / t, 1), F.log_softmax(target.float() / t, 1), log_target=True,
                  reduction="batchmean")
    return (1 - weight) * loss + weight * t * t * kl

"""Timing a model as it is deployed: end to end, BN folded, side by side with another model.

The example input says how a model is deployed: its device, dtype and memory format are the
deployment's. A CPU fp32 input times ``deploy(model)``; a CUDA bf16 channels_last input times
``deploy(model, device="cuda", dtype=torch.bfloat16, channels_last=True)``, what tensor cores want
(other widths and layouts leave a pruned model no faster on a GPU). :func:`timing_input` makes that
input for a deployment target.

Backends (:data:`BACKENDS`): eager PyTorch, ``torch.compile`` (TorchInductor; on a GPU with CUDA
graphs, as :func:`netslim.deploy` compiles), or ONNX Runtime on the CPU. A speedup compares two models
timed in turns (:func:`deployed_latencies`), so that a machine slowing down meanwhile slows both.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .layers import evaluating

__all__ = ["BACKENDS", "SpeedCheck", "against_original", "deployed_latencies", "deployed_latency", "measure_latency",
           "original_of", "speed_check", "timing_input"]

BACKENDS = ("eager", "onnxruntime", "compile")
RUNTIME_NAMES = {"eager": "eager PyTorch", "onnxruntime": "ONNX Runtime", "compile": "torch.compile (TorchInductor)"}
# A layer's runs agree when their median is at most this factor over the fastest. Idle, they agree within
# 5-20% here; on this 2-core machine shared with other jobs, a 64 -> 64 3x3 conv at 32x32 (batch 1, 2 threads)
# timed 0.47 ms at best and 32 ms at the median, its threads descheduled for whole time slices, and the
# fastest of 5 such runs was a stall more often than not: the VGG-19 tables summed to 87 ms for a model
# measured whole at 15 ms, and cached, they refused every later plan.
STEADY = 1.5
# ... plus this many seconds: runs of a few microseconds spread by more than 1.5x (the timer and the dispatch),
# where a descheduled thread costs milliseconds.
STEADY_SLACK = 5e-5
STEADY_PATIENCE = 0.1  # seconds a layer's sample is timed at most while its runs disagree
# A compact model measured this many times faster than its budget is said to be (the planner aims within 5%):
# VGG-19, batch 1, 2 threads, beside a busy process on this 2-core machine: planned for 2x, it measured 209x,
# the original stalling 16 ms per layer on a descheduled thread, the pruned layers short enough not to.
FAR_FASTER = 1.5
# Whole models are timed for at least this long (fastest run kept): a speedup compares two such
# timings. Measured here (VGG-19 and its 60%-pruned model, batch 1, idle machine, 6 timings each): the
# speedup spread over 10% with 1 s per timing, 5% with 3 s.
END_TO_END = 2.0


def timing_input(size: Sequence[int], batch: int = 1, target: str = "cpu", backend: str = "eager") -> torch.Tensor:
    """Zeros of ``(batch, *size)`` in the format a model is deployed in for ``target`` (see
    :func:`netslim.deployment.target_defaults`): fp32 on the CPU; bf16, channels_last on CUDA for a gpu.
    ONNX Runtime runs on the CPU in fp32 whatever the target."""
    from .deployment import target_defaults

    on_gpu = backend != "onnxruntime" and target != "cpu"
    if on_gpu and not torch.cuda.is_available():
        raise ValueError("timing for a gpu target needs a CUDA GPU on this machine; time for --target cpu here")
    _check_fits(batch, size, on_gpu)
    x = torch.zeros(batch, *size)
    if not on_gpu:
        return x
    defaults = target_defaults(target)
    x = x.to(device="cuda", dtype=defaults["dtype"])
    return x.contiguous(memory_format=torch.channels_last) if defaults["channels_last"] and x.dim() == 4 else x


def _check_fits(batch: int, size: Sequence[int], on_gpu: bool) -> None:
    """A ValueError, before anything is allocated, when the timing input alone takes more than an eighth of
    the memory it lives in: the forward pass needs many times the input."""
    need = 4 * batch * math.prod(size)
    if on_gpu:
        memory, where = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory, "this GPU has"
    else:
        memory, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine has"
    if need > memory / 8:
        raise ValueError(f"a latency batch of {batch} (--latency-batch) at input {'x'.join(map(str, size))} takes "
                         f"{need / 2 ** 30:.3g} GiB for the input alone, and a forward pass many times that; {where} "
                         f"{memory / 2 ** 30:.3g} GiB: plan at the batch the model is deployed at")


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is laid out channels_last (and is not also plain contiguous, as 1x1 maps are)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def analysis_input(model: nn.Module, example_input: torch.Tensor | None) -> torch.Tensor | None:
    """One sample of ``example_input`` on the model's own device and dtype, contiguous: what the channel
    analysis runs ``model`` on. Channels do not depend on the batch, and the deployment's format is for
    timing only (a ResNet-50 forward pass at batch 32 takes seconds on a CPU)."""
    if example_input is None:
        return None
    reference = next(model.parameters(), None)
    sample = example_input[:1]
    if reference is None:
        return sample.contiguous()
    return sample.to(device=reference.device, dtype=reference.dtype).contiguous()


@torch.no_grad()
def measure_latency(model: nn.Module, example_input: torch.Tensor, repeats: int = 20, warmup: int = 3,
                    min_seconds: float = 0.02) -> float:
    """Seconds of one forward pass of ``model`` (eval mode, as it is) on ``example_input``: the fastest of
    the runs timed (see :func:`paired_times`)."""
    with evaluating(model):
        return best_time(lambda: model(example_input), repeats, warmup, example_input.is_cuda, min_seconds)


def best_time(run: Callable[[], object], repeats: int, warmup: int, cuda: bool = False,
              min_seconds: float = 0.02) -> float:
    """The fastest run: what the op costs when nothing else interrupts it (the median would carry the
    scheduler's noise on a shared machine). See :func:`paired_times` for how many runs."""
    return paired_times([run], repeats, warmup, cuda, min_seconds)[0]


def steady_time(run: Callable[[], object], repeats: int, warmup: int = 1, cuda: bool = False,
                min_seconds: float = 0.02, patience: float = STEADY_PATIENCE) -> tuple[float, bool]:
    """The fastest run, and whether the runs agreed: their median at most :data:`STEADY` times the fastest
    (plus :data:`STEADY_SLACK`).
    Runs that disagree go on (the fastest is then likelier to be one nothing interrupted) until they agree,
    or for ``patience`` seconds; a table built from runs that never agreed is not cached (netslim.latency)."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(max(warmup, 1)):
        run()
    times: list[float] = []
    while True:
        sync()
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
        if len(times) >= max(repeats, 3) and sum(times) >= min_seconds:
            agree = statistics.median(times) <= STEADY * min(times) + STEADY_SLACK
            if agree or sum(times) >= patience:
                return min(times), agree


def paired_times(runs: Sequence[Callable[[], object]], repeats: int, warmup: int, cuda: bool = False,
                 min_seconds: float = 0.02) -> list[float]:
    """The fastest time of each of ``runs``, timed in turns (one run of each, again and again), so that
    a machine slowing down or speeding up meanwhile changes all of them alike: a speedup compares two
    timings taken side by side, not minutes apart. At least 3 turns and ``min_seconds`` per run; then
    until ``repeats`` turns or 5 x ``min_seconds`` (a 5 s forward pass is timed 3 times, not 20); at
    most 50 turns. Warm-up: ``warmup`` turns, fewer when they already took ``min_seconds``."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)  # CUDA work is asynchronous: wait for it

    def timed(run: Callable[[], object]) -> float:
        sync()
        start = time.perf_counter()
        run()
        sync()
        return time.perf_counter() - start

    warm = 0.0
    for _ in range(max(warmup, 1)):
        warm += max(timed(run) for run in runs)
        if warm >= min_seconds:
            break
    times: list[list[float]] = [[] for _ in runs]
    spent = 0.0
    while True:
        for run, kept in zip(runs, times, strict=True):
            kept.append(timed(run))
        spent += max(kept[-1] for kept in times)
        turns = len(times[0])
        if turns >= 50 or (turns >= 3 and spent >= min_seconds and (turns >= repeats or spent >= 5 * min_seconds)):
            return [min(kept) for kept in times]


def deployed_latency(model: nn.Module, example_input: torch.Tensor, backend: str = "eager",
                     repeats: int = 20) -> float:
    """Seconds per forward pass of ``model`` as deployed on ``backend`` in the format of ``example_input``
    (module docstring), BN folded: eager PyTorch, ``torch.compile`` (static shapes; compiling is not
    timed), or ONNX Runtime on the CPU (exported with :func:`netslim.export.export_onnx`, as many
    intra-op threads as ``torch.get_num_threads()``)."""
    return deployed_latencies([model], example_input, backend, repeats)[0]


def deployed_latencies(models: Sequence[nn.Module], example_input: torch.Tensor, backend: str = "eager",
                       repeats: int = 20) -> list[float]:
    """:func:`deployed_latency` of several models timed in turns, side by side (:func:`paired_times`)."""
    check_backend(backend, example_input)
    if backend == "compile":
        # The compact models of one class share its forward's code: without a reset, dynamo would keep
        # every earlier model's graph and, past its recompile limit, silently run the next one eagerly.
        torch._dynamo.reset()
    runs = [_deployed(model, example_input, backend) for model in models]
    with torch.no_grad():
        return paired_times(runs, repeats, 3, example_input.is_cuda, END_TO_END)


def _deployed(model: nn.Module, example_input: torch.Tensor, backend: str) -> Callable[[], object]:
    """One forward pass of ``model`` as deployed on ``backend`` (BN folded; eval mode)."""
    from .deployment import deploy
    from .export import onnx_bytes

    if backend == "onnxruntime":
        session = ort_session(onnx_bytes(model, tuple(example_input.shape[1:]), batch=example_input.shape[0]))
        feed = {session.get_inputs()[0].name: example_input.detach().numpy()}
        return lambda: session.run(None, feed)
    deployed = deploy(model, device=example_input.device, dtype=example_input.dtype,
                      channels_last=is_channels_last(example_input), compile=backend == "compile",
                      example_input=analysis_input(model, example_input))
    if backend == "compile":
        with torch.no_grad():
            deployed(example_input)  # compiles: not part of the time of a forward pass
    return lambda: deployed(example_input)


def check_backend(backend: str, example_input: torch.Tensor | None = None) -> None:
    """One-line errors for an unknown backend, a missing dependency, or an input the backend cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"latency backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "compile" and (example_input is None or not example_input.is_cuda):
        import shutil

        if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
            raise ImportError("the compile latency backend needs a C++ compiler for TorchInductor's CPU code: "
                              "apt-get install g++ (or choose --latency-backend eager)")
    if backend == "onnxruntime":
        import importlib.util

        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(f"the onnxruntime latency backend needs {' and '.join(missing)}: "
                              f"pip install {' '.join(missing)}")
        if example_input is not None and (example_input.device.type != "cpu" or example_input.dtype != torch.float32):
            raise ValueError("the onnxruntime latency backend runs fp32 on the CPU: time it with a CPU float32 "
                             f"input, not {example_input.dtype} on {example_input.device.type}")


def ort_session(serialized: bytes):
    """An ONNX Runtime CPU session as netslim times it: as many intra-op threads as torch uses (the
    thread count tables are keyed by), and no spinning. Spinning workers keep a core busy after each
    run, taking it from the next session run in turns: measured here, VGG-19 at batch 1 timed 11-14 ms
    beside its compact model with spinning and 7.6-9 ms alone or with spinning off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])


@dataclass
class SpeedCheck:
    """Original and compact model, each deployed (BN folded) and timed end to end on the same input."""

    original: float
    compact: float
    reason: str = ""  # why the compact model is not faster, when it is not

    @property
    def speedup(self) -> float:
        return self.original / self.compact

    def line(self) -> str:
        text = (f"measured: {1e3 * self.original:.3g} ms -> {1e3 * self.compact:.3g} ms per batch "
                f"({self.speedup:.2f}x faster)")
        if self.speedup < 1:
            text += f"; warning: the compact model is SLOWER than the original here ({self.reason})"
        return text

    def missed(self, target_seconds: float, batch: int, tolerance: float = 0.05) -> str:
        """One warning line when the compact model measured slower than ``target_seconds`` by more than
        ``tolerance`` (a timing's noise), or faster by more than :data:`FAR_FASTER` times, else "": the budget
        asked was not reached as measured, or the model is pruned far more than it needs."""
        if self.compact * FAR_FASTER < target_seconds:
            return (f"warning: the compact model measured {self.speedup:.2f}x faster, far past the "
                    f"{self.original / target_seconds:.2f}x asked: the latency measured here jumps between plans "
                    "(on a busy machine, layers whose threads wait for one descheduled for a whole time slice "
                    "do that), so it is pruned more than the budget needs; plan on an idle machine or with fewer "
                    "threads (OMP_NUM_THREADS), or prune by --percent")
        if self.compact <= target_seconds * (1 + tolerance):
            return ""
        left = "fixed per-op overhead at batch 1" if batch == 1 else "time outside the pruned layers"
        return (f"warning: the latency budget was not met as measured: {1e3 * self.compact:.3g} ms "
                f"({self.speedup:.2f}x) for {1e3 * target_seconds:.3g} ms ({self.original / target_seconds:.2f}x); "
                f"what is left is mostly {left} or layers the guards keep: relax --max-layer-fraction or "
                "--min-channels, or time at the deployment batch (--latency-batch)")


def speed_check(original: nn.Module, compact: nn.Module, example_input: torch.Tensor,
                repeats: int = 20, backend: str = "eager") -> SpeedCheck:
    """Time both models as deployed on ``backend``, in turns (:func:`deployed_latencies`), and, when the
    compact one is slower, say the likely reason."""
    from .deployment import misaligned_widths

    a, b = deployed_latencies([original, compact], example_input, backend, repeats)
    reason = ""
    if b > a:
        odd = misaligned_widths(compact, 8, analysis_input(compact, example_input))
        reasons = [f"{len(odd)} widths are not multiples of 8 (prune with --round-to 8)"] if odd else []
        if example_input.shape[0] == 1:
            reasons.append("at batch 1 the time is mostly fixed per-op overhead, not arithmetic")
        precision = "" if example_input.dtype == torch.float32 else f" {str(example_input.dtype).split('.')[-1]}"
        reasons.append(f"backend: {RUNTIME_NAMES[backend]} on {example_input.device.type}{precision}, "
                       f"{torch.get_num_threads()} threads")
        reason = "; ".join(reasons)
    return SpeedCheck(a, b, reason)


def original_of(arch: dict, factory=None) -> nn.Module | None:
    """The unpruned model a checkpoint's architecture was cut from (untrained weights: enough for timing),
    or None when it cannot be rebuilt without running code the user did not name."""
    from .checkpoint import CheckpointError, build_model

    try:
        return build_model({**arch, "shapes": {}}, factory).eval()
    except (CheckpointError, ImportError):
        return None


def against_original(compact: nn.Module, arch: dict, input_size: Sequence[int], target: str = "cpu",
                     backend: str = "eager", factory=None) -> str | None:
    """One line: the compact model of a checkpoint (described by ``arch``) timed against the unpruned model it
    was cut from (:func:`original_of`, :func:`speed_check`), on this machine, at batch 1, deployed for
    ``target`` on ``backend``. None when there is nothing to compare: the model is not pruned, the original
    cannot be rebuilt, or this machine cannot run ``target`` (a gpu target without CUDA)."""
    if not arch.get("shapes") or (target == "gpu" and not torch.cuda.is_available()):
        return None
    original = original_of(arch, factory=factory)
    if original is None:
        return None
    x = timing_input(input_size, 1, target, backend)
    check = speed_check(original, compact, x, backend=backend)
    return (f"on this machine ({x.device.type}, {str(x.dtype).split('.')[-1]}, batch 1, {RUNTIME_NAMES[backend]}): "
            f"{check.line()}")

"""An inference-ready compact model: BN folded, in the precision and memory layout of the target, optionally compiled.

    fast = deploy(small, device="cuda", dtype=torch.bfloat16, channels_last=True)   # an nn.Module
    export_program(small, "small.pt2", target="gpu")       # torch.export program, loads with torch.export.load
    export_aoti(small, "small-aoti.pt2")                   # compiled ahead of time by AOTInductor

Why these defaults on a GPU (a pruned model no faster on a GPU is a common complaint of slimming
tools' users): tensor cores want bf16 and channel counts that are
multiples of 8; channels_last avoids layout transposes around every convolution. The channel counts
come from pruning, so rounding is the plan's job (``plan_pruning(round_to=8)``, which keeps the
next-largest-|γ| channels rather than padding); :func:`misaligned_widths` says where a compact model
was pruned without it.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils._pytree import tree_map

from .export import TOLERANCE, ExportError, fold_batchnorm, relative_error
from .graph import trace_channels
from .layers import device_of
from .metrics import input_size_of
from .runfolder import check_output, replacing, write_atomic

__all__ = ["GraphedInference", "InferenceModel", "TARGETS", "deploy", "export_aoti", "export_program",
           "export_torchscript", "misaligned_widths", "resolve_target", "target_defaults"]

TARGETS = ("cpu", "gpu")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_target(target: str = "auto") -> str:
    """``"auto"``: ``"gpu"`` when this machine has CUDA, else ``"cpu"``; a named target is returned as is."""
    if target == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if target not in TARGETS:
        raise ValueError(f"unknown deployment target {target!r}; choose auto, cpu or gpu")
    return target


def target_defaults(target: str) -> dict:
    """Deployment defaults for ``target``: GPU: bf16, channels_last, widths multiples of 8; CPU: fp32."""
    if target not in TARGETS:
        raise ValueError(f"unknown deployment target {target!r}; choose cpu or gpu")
    if target == "gpu":
        return {"dtype": torch.bfloat16, "channels_last": True, "round_to": 8}
    return {"dtype": torch.float32, "channels_last": False, "round_to": 1}


class InferenceModel(nn.Module):
    """A model in eval mode that takes fp32 input in any layout, computes in ``dtype`` and ``memory_format``,
    and returns fp32 outputs (tensors, or tuples/dicts of them, as the model returns)."""

    def __init__(self, net: nn.Module, dtype: torch.dtype, channels_last: bool) -> None:
        super().__init__()
        self.net, self.dtype, self.channels_last = net, dtype, channels_last
        if hasattr(net, "input_size"):
            self.input_size = net.input_size

    def forward(self, x: torch.Tensor):
        x = x.to(self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.net(x)
        return tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, out)


def misaligned_widths(model: nn.Module, multiple: int, example_input: torch.Tensor | None = None,
                      fixed: Sequence[str] = ()) -> dict[str, int]:
    """``{bn_path: width}`` of the prunable BN layers whose width is not a multiple of ``multiple``."""
    if multiple <= 1:
        return {}
    graph = trace_channels(model, example_input, fixed)
    prunable = graph.prunable_roots()
    return {path: len(use.out_ids) for path, use in graph.bns.items()
            if len(use.out_ids) % multiple and any(graph.root(i) in prunable for i in use.out_ids)}


def deploy(model: nn.Module, *, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
           channels_last: bool = False, compile: bool = False, fold: bool = True,
           example_input: torch.Tensor | None = None) -> nn.Module:
    """An inference copy of ``model``: BN folded into the convs (``fold``), eval mode, on ``device``,
    weights in ``dtype`` and ``channels_last`` layout, wrapped in :class:`InferenceModel`; with
    ``compile``, ``torch.compile``'d (CUDA graphs via mode="reduce-overhead" on a GPU). ``model`` is not changed.
    ``example_input`` (in ``model``'s own device and dtype) is what the BN fold's analysis runs the model on,
    for a model that does not declare its ``input_size``.
    """
    if dtype not in DTYPES.values():
        raise ValueError(f"deploy dtype must be one of float32, bfloat16, float16, got {dtype}")
    device = torch.device(device) if device is not None else device_of(model)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("deploying for CUDA but no CUDA GPU is available; use device='cpu'")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bf16 support; deploy with dtype=torch.float16 or torch.float32")
    if fold and example_input is None and getattr(model, "input_size", None) is None:
        raise ValueError(f"deploy: {type(model).__name__} declares no input_size, and folding BN runs it once: pass "
                         "example_input=torch.zeros(1, C, H, W) (or set model.input_size = (C, H, W))")
    net = fold_batchnorm(model, example_input) if fold else copy.deepcopy(model).eval()
    net = net.to(device=device, dtype=dtype)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    wrapped = InferenceModel(net, dtype, channels_last).eval()
    for p in wrapped.parameters():
        p.requires_grad_(False)
    if compile:
        if device.type == "cuda":
            return GraphedInference(torch.compile(wrapped, mode="reduce-overhead", dynamic=False))
        return torch.compile(wrapped, dynamic=False)
    return wrapped


class GraphedInference(nn.Module):
    """A ``torch.compile(mode="reduce-overhead")`` model whose outputs stay valid after the next call.

    CUDA-graph replays overwrite the previous call's output buffers; each call here starts a new graph
    step and returns copies (of the outputs only: cheap next to the model). One graph is recorded per
    input shape: keep batch sizes fixed.
    """

    def __init__(self, compiled: nn.Module) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, x: torch.Tensor):
        torch.compiler.cudagraph_mark_step_begin()
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, self.compiled(x))


def _export(model: nn.Module, size: Sequence[int], device: torch.device, max_batch: int):
    example = torch.randn(2, *size, generator=torch.Generator().manual_seed(0)).to(device)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception as e:  # torch.export raises many types
        raise ExportError(f"torch.export failed for {type(model).__name__} ({type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:300]})") from e


def _check(reference: nn.Module, run, size: Sequence[int], device: torch.device, dtype: torch.dtype,
           path: Path) -> float:
    """Compare ``run`` (the exported artifact) with ``reference`` at batch 3; an ExportError if they differ.

    fp32 must agree to TOLERANCE (relative to the largest output); bf16/fp16 to 5e-2, since a compiler may
    fuse and round differently at 8 or 11 mantissa bits."""
    x = torch.randn(3, *size, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        error = relative_error(run(x), reference(x))
    tolerance = TOLERANCE if dtype == torch.float32 else 5e-2
    if not error <= tolerance:
        raise ExportError(f"{path}: the exported model differs from PyTorch by {error:.3g} (relative to the "
                          f"largest output), more than {tolerance:g}")
    return error


def export_program(model: nn.Module, path: str | Path, *, input_size: Sequence[int] | None = None,
                   device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                   channels_last: bool = False, fold: bool = True, max_batch: int = 4096,
                   overwrite: bool = False) -> Path:
    """Write the deployed model (:func:`deploy`) as a ``torch.export`` program with a dynamic batch axis.

    Load it with ``torch.export.load(path).module()``. The program is checked against the deployed
    PyTorch model before it is written; it runs on ``device`` (default: the model's). Written whole or not
    at all (a failure keeps the previous file); an existing ``path`` is replaced only with ``overwrite``.
    """
    path = check_output(path, overwrite)
    size = input_size_of(model, input_size)
    deployed = deploy(model, device=device, dtype=dtype, channels_last=channels_last, fold=fold)
    device = device_of(deployed)
    program = _export(deployed, size, device, max_batch)
    buffer = io.BytesIO()  # serialized in memory: write_atomic says when the disk is full (torch's writer aborts)
    with warnings.catch_warnings():
        # torch's archive writer notes weights it stores whole (no tensor shares their storage): not a problem
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        torch.export.save(program, buffer)
    # the file as written is what is checked, before it replaces the previous one
    write_atomic(path, buffer.getbuffer(), verify=lambda written: _check(
        deployed, torch.export.load(str(written)).module(), size, device, dtype, path))
    return path


def export_aoti(model: nn.Module, path: str | Path, *, input_size: Sequence[int] | None = None,
                device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                channels_last: bool = False, fold: bool = True, max_batch: int = 4096,
                overwrite: bool = False) -> Path:
    """Compile the deployed model ahead of time with AOTInductor (``torch.compile``'s backend) into a
    ``.pt2`` package for ``device``; load it with ``torch._inductor.aoti_load_package(path)``.

    Needs a C++ compiler (and, for CUDA, the GPU it is compiled for). Checked against PyTorch before it
    replaces ``path`` (a failure keeps the previous file); an existing ``path`` only with ``overwrite``.
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"an AOTInductor package must be a .pt2 file, got {path.name}")
    path = check_output(path, overwrite)
    size = input_size_of(model, input_size)
    deployed = deploy(model, device=device, dtype=dtype, channels_last=channels_last, fold=fold)
    device = device_of(deployed)
    program = _export(deployed, size, device, max_batch)
    with replacing(path, suffix=".pt2") as tmp:  # the packager writes the file itself, named .pt2
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning)
                written = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
                compiled = torch._inductor.aoti_load_package(written)
        except Exception as e:  # compiler missing, unsupported op, ...
            raise ExportError(f"AOTInductor compilation failed ({type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0][:300]}); is a C++ compiler installed?") from e
        _check(deployed, compiled, size, device, dtype, path)
    return path


def export_torchscript(model: nn.Module, path: str | Path, *, input_size: Sequence[int] | None = None,
                       device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                       channels_last: bool = False, fold: bool = True, overwrite: bool = False) -> Path:
    """Write the deployed model (:func:`deploy`) traced to TorchScript (``torch.jit.load``; deprecated by
    PyTorch, kept for runtimes that still read it). Checked against the deployed PyTorch model; written
    whole or not at all; an existing ``path`` is replaced only with ``overwrite``."""
    path = check_output(path, overwrite)
    size = input_size_of(model, input_size)
    deployed = deploy(model, device=device, dtype=dtype, channels_last=channels_last, fold=fold)
    device = device_of(deployed)
    with torch.no_grad(), warnings.catch_warnings():
        _quiet_about_jit()
        traced = torch.jit.trace(deployed, torch.zeros(1, *size, device=device))
    buffer = io.BytesIO()  # serialized in memory: write_atomic says when the disk is full (torch's writer aborts)
    with warnings.catch_warnings():
        _quiet_about_jit()
        torch.jit.save(traced, buffer)

    def loaded(written: Path) -> nn.Module:
        with warnings.catch_warnings():
            _quiet_about_jit()
            return torch.jit.load(str(written), map_location=device)

    # the file as written is what is checked, before it replaces the previous one
    write_atomic(path, buffer.getbuffer(), verify=lambda written: _check(deployed, loaded(written), size, device,
                                                                         dtype, path))
    return path


def _quiet_about_jit() -> None:
    """Inside ``warnings.catch_warnings()``: no warning that TorchScript is deprecated (the docstring says so;
    torch warns with DeprecationWarning or, from 2.14, another category, at every call)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")

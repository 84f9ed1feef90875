"""Deployment export of a (compact) model: BatchNorm folding and ONNX.

    small = netslim.apply_plan(model, plan)
    deploy = fold_batchnorm(small)                        # BN merged into the conv/linear before it
    export_onnx(small, "small.onnx")                      # folded, dynamic batch, checked by onnxruntime

A BN that *owns* the output of the conv/linear before it (``LayerUse`` kind ``"bn"`` in
:func:`netslim.graph.trace_channels`: that layer's only user) is an affine map per channel in eval
mode, ``y = s·x + t`` with ``s = γ/√(var+ε)`` and ``t = β − s·mean``, so it folds exactly into that
layer: ``W ← s·W`` (per output channel), ``b ← s·b + t``; the BN becomes ``nn.Identity``. Selection
BNs (kind ``"select_bn"``, which read a tensor other layers read too: the residual stream of a
pre-activation ResNet, a DenseNet's concatenation) have no such layer and stay.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .graph import ChannelGraph, trace_channels
from .layers import device_of, evaluating
from .metrics import input_size_of
from .runfolder import check_output, write_atomic

__all__ = ["ExportError", "check_onnx", "export_onnx", "fold_batchnorm", "foldable_pairs", "relative_error"]

_PRODUCERS = ("conv", "linear", "depthwise", "conv_t")
_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
TOLERANCE = 1e-4  # relative: max |a - b| / max |reference|


def _opsets() -> range:
    """The opsets the TorchScript-based exporter writes (what ``export_onnx`` uses)."""
    try:
        from torch.onnx import _constants

        return range(_constants.ONNX_MIN_OPSET, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET + 1)
    except (ImportError, AttributeError):  # a torch that moved them: the range of torch 2.x
        return range(7, 21)


OPSETS = _opsets()


class ExportError(RuntimeError):
    """An exported model does not reproduce the PyTorch model (or cannot be exported)."""


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |got − expected| / max |expected|`` (the scale of the output, not elementwise)."""
    got, expected = got.detach().double(), expected.detach().double()
    return float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


def foldable_pairs(model: nn.Module, example_input: torch.Tensor | None = None,
                   graph: ChannelGraph | None = None, fixed: Sequence[str] = ()) -> dict[str, str]:
    """``{bn_path: producer_path}`` for every BN that can be folded into the layer it follows.

    The producer is the conv/linear/depthwise (or transposed conv) layer whose output the BN alone
    reads, as the analysis saw it run. Layers run more than once, and BNs that normalize with batch
    statistics in eval mode, are left alone.
    """
    graph = graph or trace_channels(model, example_input, fixed)
    pairs: dict[str, str] = {}
    for path, producer in graph.producers.items():
        bn = model.get_submodule(path)
        if not (isinstance(bn, _BatchNorm) and bn.track_running_stats and bn.running_mean is not None):
            continue
        if graph.layers[path].kind == "bn" and graph.layers[producer].kind in _PRODUCERS:
            pairs[path] = producer
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example_input: torch.Tensor | None = None,
                   fixed: Sequence[str] = ()) -> nn.Module:
    """A copy of ``model`` in eval mode with every owning BN folded into its conv/linear.

    Folded BNs become ``nn.Identity``; selection BNs stay. The copy equals ``model.eval()`` up to
    float rounding (the fold is computed in float64). It is for inference: training it again
    would train without BN. ``model`` itself is not changed.
    """
    pairs = foldable_pairs(model, example_input, fixed=fixed)
    folded = copy.deepcopy(model).eval()
    for bn_path, layer_path in pairs.items():
        bn, layer = folded.get_submodule(bn_path), folded.get_submodule(layer_path)
        _fold_into(layer, bn)
        if type(bn) in _PLAIN_BN:
            folded.set_submodule(bn_path, nn.Identity())
        else:  # a subclass may do more than normalize (timm's BatchNormAct2d applies its activation): keep it,
            _make_identity(bn)  # normalizing by nothing

    return folded


def _make_identity(bn: _BatchNorm) -> None:
    bn.running_mean.zero_()
    bn.running_var.fill_(1 - bn.eps)
    if bn.weight is not None:
        bn.weight.fill_(1)
        bn.bias.zero_()


def _fold_into(layer: nn.Module, bn: _BatchNorm) -> None:
    w = layer.weight
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    shift = beta - scale * mean
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(var)
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):  # weight (in, out, *k), groups == 1
        shape = (1, -1) + (1,) * (w.dim() - 2)
    else:  # conv / depthwise (out, in/groups, *k), linear (out, in)
        shape = (-1,) + (1,) * (w.dim() - 1)
    new_w = (w.double() * scale.view(shape)).to(w.dtype)
    new_b = (scale * bias + shift).to(w.dtype)
    layer.weight = nn.Parameter(new_w, requires_grad=w.requires_grad)
    layer.bias = nn.Parameter(new_b, requires_grad=w.requires_grad)


def export_onnx(model: nn.Module, path: str | Path, input_size: Sequence[int] | None = None, fold: bool = True,
                opset: int = 17, *, check: bool = True, dynamo: bool = False, batch: int = 2,
                overwrite: bool = False) -> Path:
    """Export ``model`` (eval mode) to ONNX at ``path``, with a dynamic batch axis.

    ``input_size``: (C, H, W) of one sample (default: ``model.input_size``). ``fold``: fold the BNs
    first (:func:`fold_batchnorm`). Uses the TorchScript-based exporter (``dynamo=False``); it needs
    the ``onnx`` package, as the torch.export-based one (``dynamo=True``) does, which needs
    ``onnxscript`` too (an ImportError says what to install). If onnxruntime is installed and
    ``check`` is set, the file is run at another batch size and its output must match the PyTorch
    model within 1e-4 (relative to the output's largest magnitude); an :class:`ExportError` says by
    how much it does not. The file is written whole or not at all: checked before it replaces ``path``
    (:func:`netslim.runfolder.write_atomic`), so a failed export keeps the previous file. An existing
    ``path`` is replaced only with ``overwrite``.
    """
    if not (isinstance(opset, int) and not dynamo and opset in OPSETS or dynamo and isinstance(opset, int)
            and opset >= 18):
        raise ValueError(f"opset {opset!r} is not one the ONNX exporter writes: give {OPSETS[0]} to {OPSETS[-1]}"
                         + (" (18 or more with dynamo=True)" if dynamo else ""))
    path = check_output(path, overwrite)
    missing = [m for m in ("onnx",) + (("onnxscript",) if dynamo else ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)}: pip install {' '.join(missing)} "
                          "(or pip install 'netslim[export]', which adds onnxruntime to check the file)")
    size = input_size_of(model, input_size)
    reference = copy.deepcopy(model).eval()
    serialized = onnx_bytes(model, size, fold=fold, opset=opset, dynamo=dynamo, batch=batch)
    write_atomic(path, serialized, verify=lambda written: check and check_onnx(reference, written, size,
                                                                               batch=batch + 1, shown_as=path))
    return path


def onnx_bytes(model: nn.Module, input_size: Sequence[int], fold: bool = True, opset: int = 17, *,
               dynamo: bool = False, batch: int = 2) -> bytes:
    """``model`` (eval mode, BN folded with ``fold``) serialized as an ONNX model, in memory.

    Nothing is written to disk: :func:`export_onnx` writes these bytes whole or not at all, and timing
    on ONNX Runtime loads them directly (a temporary file there would fail on a full disk, where the
    export that follows reports the full disk itself).
    """
    size = tuple(input_size)
    device = device_of(model)
    to_export = fold_batchnorm(model, torch.zeros(2, *size, device=device)) if fold else copy.deepcopy(model).eval()
    example = torch.randn(batch, *size, generator=torch.Generator().manual_seed(0)).to(device)
    kwargs = dict(input_names=["input"], output_names=["output"], opset_version=opset,
                  dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in torch >= 2.9 (but kept, and dependency-free).
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            if dynamo:
                return torch.onnx.export(to_export, (example,), dynamo=True, **kwargs).model_proto.SerializeToString()
            buffer = io.BytesIO()
            torch.onnx.export(to_export, (example,), buffer, dynamo=False, **kwargs)
            return buffer.getvalue()
    except Exception as e:  # the exporters raise many types
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__} "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''})") from e


def check_onnx(model: nn.Module, path: str | Path, input_size: Sequence[int], batch: int = 3,
               tolerance: float = TOLERANCE, shown_as: str | Path | None = None) -> float | None:
    """Run the ONNX file with onnxruntime (if installed) and compare with ``model`` in eval mode.

    Returns the relative error, or None when onnxruntime is not installed (nothing checked). ``shown_as``:
    the name errors give the file (the one it will have, for a file checked before it is renamed).
    """
    shown_as = shown_as or path
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(1))
    with evaluating(model), torch.no_grad():
        expected = model(x.to(device_of(model))).float().cpu()
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    except Exception as e:  # onnxruntime's own exception types
        raise ExportError(f"{shown_as}: onnxruntime cannot run the file ({type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:300]})") from e
    if tuple(got.shape) != tuple(expected.shape):
        raise ExportError(f"{shown_as}: onnxruntime gives shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}")
    error = relative_error(got, expected)
    if not error <= tolerance:
        raise ExportError(f"{shown_as}: onnxruntime output differs from PyTorch by {error:.3g} (relative to the "
                          f"largest output), more than the tolerance {tolerance:g}")
    return error

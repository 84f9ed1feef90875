"""Exporting a checkpoint for deployment: what ``netslim export`` does, callable from a notebook.

The model is exported as it will run on its target (:func:`netslim.deployment.target_defaults`: BN folded,
bf16 and channels_last on a GPU, fp32 on a CPU), into any of ONNX (checked against PyTorch), a
torch.export program, an AOTInductor package and TorchScript. Before that, where this machine is the
target's, a pruned model is timed against the original it was cut from (never slower, or said so), and
widths that tensor cores would pad are named.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .checkpoint import Factory, load_model
from .deployment import (
    DTYPES,
    export_aoti,
    export_program,
    export_torchscript,
    misaligned_widths,
    resolve_target,
    target_defaults,
)
from .export import export_onnx
from .metrics import checked_input_size
from .timing import against_original


def export_checkpoint(checkpoint: str | Path, *, onnx: str | Path | None = None, program: str | Path | None = None,
                      aoti: str | Path | None = None, torchscript: str | Path | None = None, target: str = "auto",
                      dtype: str = "auto", memory_format: str = "auto", round_to: int | None = None,
                      fold: bool = True, opset: int = 17, overwrite: bool = False,
                      input_size: Sequence[int] | None = None, factory: Factory = None, trust_pickle: bool = False,
                      log: Callable[[str], None] = print) -> dict[str, Path]:
    """Export the model of ``checkpoint`` to each file given (``onnx``, ``program``, ``aoti``, ``torchscript``);
    returns the paths written by format.

    ``target``: cpu, gpu or auto (gpu when this machine has CUDA); ``dtype`` (a key of :data:`DTYPES`) and
    ``memory_format`` (contiguous, channels_last) default to the target's ("auto"); ONNX is always fp32.
    ``round_to``: the width multiple checked (default: the target's); ``fold=False`` keeps the BN layers.
    ``input_size``: (C, H, W) or one side, for a model that declares none. ``log`` gets the timing against
    the original, a warning about misaligned widths and a line per file written.
    """
    given = {"onnx": onnx, "program": program, "aoti": aoti, "torchscript": torchscript}
    if all(path is None for path in given.values()):
        raise ValueError("give at least one of --onnx FILE, --program FILE, --aoti FILE, --torchscript FILE")
    target = resolve_target(target)
    defaults = target_defaults(target)
    dtype = DTYPES[dtype] if dtype != "auto" else defaults["dtype"]
    channels_last = defaults["channels_last"] if memory_format == "auto" else memory_format == "channels_last"
    device = "cuda" if target == "gpu" and torch.cuda.is_available() else "cpu"
    if aoti and target == "gpu" and device != "cuda":
        raise ValueError("--aoti for a gpu target compiles CUDA kernels and needs a CUDA GPU on this machine; "
                         "run the export there, or write --program instead")
    model, data = load_model(checkpoint, factory=factory, trust_pickle=trust_pickle)
    if onnx is not None and importlib.util.find_spec("onnx") is None:  # before any artifact is written
        raise ValueError("--onnx needs the onnx package: pip install onnx onnxruntime (or pip install "
                         "'netslim[export]'); onnxruntime checks the file against PyTorch")
    model.input_size = size = checked_input_size(model, input_size, str(checkpoint))
    model.eval()
    # never slower: the compact model against the original, on this machine, deployed as exported: on the
    # runtime the file is for (ONNX Runtime for an ONNX export for the CPU, where it is installed)
    runtime = "onnxruntime" if onnx and target == "cpu" and importlib.util.find_spec("onnxruntime") else "eager"
    if line := against_original(model, data["arch"], size, target, runtime, factory):
        log(line)
    multiple = round_to or defaults["round_to"]
    odd = misaligned_widths(model, multiple, torch.zeros(2, *size))
    if odd:
        listed = ", ".join(f"{k} {v}" for k, v in list(odd.items())[:4]) + (", ..." if len(odd) > 4 else "")
        log(f"warning: {len(odd)} layer widths are not multiples of {multiple} ({listed}): slower on tensor "
            f"cores; prune with --round-to {multiple} (before fine-tuning) to fix")
    dtype_name = next(k for k, v in DTYPES.items() if v == dtype)
    log(f"export for {target}: BN {'folded' if fold else 'kept'}, {dtype_name}, "
        f"{'channels_last' if channels_last else 'contiguous'}")
    options = dict(device=device, dtype=dtype, channels_last=channels_last, fold=fold, overwrite=overwrite)
    written = {}
    if onnx:
        written["onnx"] = export_onnx(model, onnx, size, fold=fold, opset=opset, overwrite=overwrite)
        log(f"ONNX model (fp32) written to {written['onnx']}")
    if program:
        written["program"] = export_program(model, program, **options)
        log(f"torch.export program written to {written['program']} (load: torch.export.load(path).module())")
    if aoti:
        written["aoti"] = export_aoti(model, aoti, **options)
        log(f"AOTInductor package written to {written['aoti']} (load: torch._inductor.aoti_load_package(path))")
    if torchscript:
        written["torchscript"] = export_torchscript(model, torchscript, **options)
        log(f"TorchScript model written to {written['torchscript']}")
    return written

"""Parameters, FLOPs and BN widths of a model named by the user: what ``netslim info`` says, as data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .checkpoint import Factory, load_model
from .layers import batch_norms
from .metrics import checked_input_size, count_flops, count_params
from .models import create_model


def model_info(model: str, *, num_classes: int | None = None, input_size: Sequence[int] | None = None,
               factory: Factory = None, trust_pickle: bool = False) -> dict:
    """``{"model", "params", "flops", "input_size", "widths"}`` of ``model``: a checkpoint file (a name ending in
    .pt or .pth that is no file is an error), else a registered name or ``package.module:factory`` built with
    ``num_classes``. FLOPs of one sample at ``input_size`` ((C, H, W) or one side; default: the model's own);
    ``widths``: the number of channels of every BN by module path. ``factory``, ``trust_pickle``: see
    :func:`netslim.checkpoint.load_model`."""
    path = Path(model)
    if path.is_file():
        net, _ = load_model(path, factory=factory, trust_pickle=trust_pickle)
    elif model.endswith((".pt", ".pth")):
        raise ValueError(f"checkpoint {path} does not exist")
    else:
        net = create_model(model, {"num_classes": num_classes} if num_classes else {})
    size = checked_input_size(net, input_size, model)
    return {"model": model, "params": count_params(net), "flops": count_flops(net, size), "input_size": list(size),
            "widths": {name: bn.num_features for name, bn in batch_norms(net).items()}}

"""Other tools' checkpoints: pickled objects, loaded only when the user says they trust the file.

Ultralytics ``.pt`` files and many trainers' checkpoints hold pickled Python objects; unpickling one
runs whatever code its author put in it. netslim's own checkpoints never need this
(``weights_only=True``). :func:`load_pickled` unpickles only with ``trust_pickle=True``
(``--trust-pickle``) and says so in one warning line.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .architecture import describe


class UntrustedPickle(ValueError):
    """A pickled checkpoint was offered without ``trust_pickle=True``."""


def load_pickled(path: str | Path, *, trust_pickle: bool = False, map_location: str = "cpu") -> object:
    """Unpickle ``path`` (``torch.load(weights_only=False)``), only when ``trust_pickle`` is True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not trust_pickle:
        raise UntrustedPickle(f"{path} is a pickled checkpoint (Ultralytics and many trainers save these): "
                              "loading it runs code from the file; pass --trust-pickle (trust_pickle=True) only "
                              "if you trust it")
    warnings.warn(f"unpickling {path} because you passed --trust-pickle: it may run code from the file",
                  stacklevel=2)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # unpickling fails in many ways; all mean "not a loadable checkpoint"
        raise ValueError(f"{path} cannot be unpickled: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None


def load_foreign_model(path: str | Path, map_location: str = "cpu", *,
                       trust_pickle: bool = False) -> tuple[nn.Module, dict]:
    """The model in another tool's pickled checkpoint, with a netslim ``arch`` describing it; only with
    ``trust_pickle`` (see :func:`load_pickled`). Ultralytics checkpoints give their EMA model (fp32) and a rebuildable
    ``ultralytics:<config>.yaml`` name, so the compact model saves as a weights-only netslim checkpoint."""
    data = load_pickled(path, trust_pickle=trust_pickle, map_location=map_location)
    if isinstance(data, dict):
        model = next((data[k] for k in ("ema", "model") if isinstance(data.get(k), nn.Module)), None)
    else:
        model = data if isinstance(data, nn.Module) else None
    if model is None:
        raise ValueError(f"{path} holds no model object (only weights?): build the model with its factory "
                         "(--factory / netslim.models.create_model) and load the weights into it")
    model = model.float().eval()
    config = getattr(model, "yaml", None)
    if isinstance(config, dict) and config.get("yaml_file"):  # Ultralytics
        imgsz = (data.get("train_args") or {}).get("imgsz", 640) if isinstance(data, dict) else 640
        side = imgsz if isinstance(imgsz, int) else max(imgsz)
        model.input_size = (int(config.get("channels", config.get("ch", 3))), side, side)
        name = f"ultralytics:{Path(str(config['yaml_file'])).name}"
        kwargs = {"nc": int(config["nc"])} if config.get("nc") is not None else {}
    else:
        name, kwargs = f"{type(model).__module__}:{type(model).__qualname__}", {}
    return model, {"arch": describe(model, name, kwargs), "state_dict": model.state_dict()}

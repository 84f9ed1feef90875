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

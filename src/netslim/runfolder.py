"""A run folder is owned by one process at a time, and what is written there never half-exists.

``locked(folder)`` takes an exclusive ``flock`` on ``folder/.netslim.lock`` (released when the
process exits, even by SIGKILL, so a lock is never stale); a second run into the same folder is one
clear error. The lock is re-entrant inside a process, so the command line can take it before loading
data and :func:`netslim.train.train` take it again. Under ``torchrun`` only rank 0 writes, and only
it locks. Temporary files of an interrupted write are removed by the next owner of the folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

LOCK_NAME = ".netslim.lock"
_held: dict[str, list] = {}  # resolved folder -> [open lock file, depth]


class FolderBusy(ValueError):
    """Another process is writing into the folder."""


class DiskFull(OSError):
    """A write failed because the disk (or quota) is full."""


@contextlib.contextmanager
def locked(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder`` (created if missing) for this process; :class:`FolderBusy` if another holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _held:
        _held[key][1] += 1
    else:
        handle = open(folder / LOCK_NAME, "a")  # held open until released
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise FolderBusy(f"{folder} is in use by another netslim process (it holds {folder / LOCK_NAME}); wait "
                             "for it to finish or give another --out") from None
        except OSError:  # a file system without flock (some network mounts): run unlocked rather than not at all
            pass
        _held[key] = [handle, 1]
    try:
        yield folder
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            _held.pop(key)[0].close()  # closing the file releases the lock


def clean_orphans(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Remove temporary files left by interrupted atomic writes of ``names`` in ``folder``.

    Call only while holding the folder's lock: an unlocked writer's temporary file would look the same.
    """
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{tmp_prefix(name)}.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def tmp_prefix(name: str) -> str:
    """The start of a temporary file's name for ``name``: short enough to leave room in a 255-byte name."""
    return name[:100]


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed over it: a kill leaves the old or the new file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{tmp_prefix(path.name)}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(e.errno, f"cannot write {path}: the disk is full") from None
        raise


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file (the same inode when both exist, else the same resolved path)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def refuse_overwriting_inputs(outputs: dict[str, str | Path | None], inputs: dict[str, str | Path | None],
                              advice: str | None = None) -> None:
    """A :class:`ValueError` naming the options when an output would replace an input or another output."""
    given_out = [(k, v) for k, v in outputs.items() if v is not None]
    given_in = [(k, v) for k, v in inputs.items() if v is not None]
    for n, (out_name, out_path) in enumerate(given_out):
        for in_name, in_path in given_in:
            if same_file(out_path, in_path):
                raise ValueError(f"{out_name} {out_path} is the {in_name} it reads: writing it would destroy the "
                                 f"input; {advice or 'give another ' + out_name}")
        for other_name, other_path in given_out[n + 1:]:
            if same_file(out_path, other_path):
                raise ValueError(f"{out_name} and {other_name} are the same file ({out_path}); give different files")

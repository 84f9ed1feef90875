"""What netslim writes: a run folder is owned by one process at a time, and a file it writes never
half-exists, never lands through a link or on a device, and never replaces what the user did not name.

Folders. ``locked(folder)`` takes an exclusive ``flock`` on ``folder/.netslim.lock`` (released when the
process exits, even by SIGKILL, so a lock is never stale); a second run into the same folder is one
clear error. Run folders nest (``run --out R`` trains in ``R/pass1/sparse``), so the enclosing run
folders (those holding a lock file) are held too, shared: ``train --out R/baseline`` cannot run while
``run --out R`` holds ``R``, nor ``R`` be taken while another process writes inside it. The lock is
re-entrant inside a process, so the command line can take it before loading data and
:func:`netslim.train.train` take it again. A command that fails inside ``locked`` leaves the folder as
it found it: the lock file it created is removed, and so are the folders it created, when empty.
Under ``torchrun`` only rank 0 writes, and only it locks.

Files. :func:`check_output` vets an output before any work: a new path, or an existing regular file the
user asked to replace (``--overwrite`` / ``overwrite=True``); never a link, a device or a folder.
:func:`replacing` is the one way a file is written: into a temporary file in the same folder, locked
while it is written (so that the next writer of that name tells a killed writer's leftovers from a
live one's and removes them), fsynced, then renamed over the path. A failure removes the temporary
file, keeps the previous file, and says so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

LOCK_NAME = ".netslim.lock"
_held: dict[str, list] = {}  # resolved folder -> [open lock file, depth, exclusive]


class FolderBusy(ValueError):
    """Another process is writing into the folder."""


class OutputRefused(ValueError):
    """An output netslim will not or cannot write: a link, a device, a folder, a file the user did not ask to
    replace, a folder that cannot be made."""


class DiskFull(OSError):
    """A write failed because the disk (or quota) is full."""


# -- folders --

@contextlib.contextmanager
def locked(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder`` (created if missing) for this process; :class:`FolderBusy` if another holds it
    or a run folder around it."""
    folder = Path(folder)
    made = _missing_folders(folder)
    folder.mkdir(parents=True, exist_ok=True)
    created_lock = []
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(inside_run_folders(folder.parent))
            created_lock.append(stack.enter_context(_hold(folder, exclusive=True, create=True)))
            yield folder
    except BaseException:
        _undo(folder, made, created_lock == [True])
        raise


@contextlib.contextmanager
def inside_run_folders(*folders: str | Path) -> Iterator[None]:
    """Hold, shared, every run folder (one with a lock file) that one of ``folders`` is or lies in, for
    writing files there: :class:`FolderBusy` while another process owns one. Creates no lock file."""
    with contextlib.ExitStack() as stack:
        for folder in (Path(f).resolve() for f in folders):  # absolute: the folders above the working one too
            for around in reversed([folder, *folder.parents]):
                if (around / LOCK_NAME).is_file():
                    stack.enter_context(_hold(around, exclusive=False, create=False))
        yield


@contextlib.contextmanager
def _hold(folder: Path, exclusive: bool, create: bool) -> Iterator[bool]:
    """The lock of ``folder``, re-entrant in this process; yields whether this call created the lock file."""
    key = str(folder.resolve())
    created = False
    if key in _held:
        entry = _held[key]
        if exclusive and not entry[2]:  # held shared here (as a folder around another): now this folder's own
            _flock(entry[0], folder, exclusive=True)
            entry[2] = True
        entry[1] += 1
    else:
        handle, created = _open_locked(folder, exclusive, create)
        _held[key] = [handle, 1, exclusive]
    try:
        yield created
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            _held.pop(key)[0].close()  # closing the file releases the lock


def _open_locked(folder: Path, exclusive: bool, create: bool):
    """The lock file of ``folder``, open and locked, and whether it was created here. A lock file its
    owner removed meanwhile (a failed command cleaning up) is opened again."""
    path = folder / LOCK_NAME
    while True:
        existed = path.exists()
        handle = open(path, "a") if create else open(path)  # held open until released
        try:
            _flock(handle, folder, exclusive)
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                return handle, not existed
        except FileNotFoundError:
            pass
        except BaseException:
            handle.close()
            raise
        handle.close()
        if not create:
            return open(os.devnull), False  # the folder's owner removed it: nobody holds it now


def _flock(handle, folder: Path, exclusive: bool) -> None:
    try:
        fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FolderBusy(f"{folder} is in use by another netslim process (it holds {folder / LOCK_NAME}); wait "
                         "for it to finish or give another --out") from None
    except OSError:  # a file system without flock (some network mounts): run unlocked rather than not at all
        pass


def _missing_folders(folder: Path) -> list[Path]:
    """The folders ``folder.mkdir(parents=True)`` would create, innermost first."""
    return [p for p in [folder, *folder.parents] if not p.exists()]


def _undo(folder: Path, made: list[Path], created_lock: bool) -> None:
    """After a failed command: remove the lock file it created, and the folders it created, when empty."""
    if created_lock and str(folder.resolve()) not in _held:
        with contextlib.suppress(OSError):
            (folder / LOCK_NAME).unlink()
    for path in made:
        with contextlib.suppress(OSError):
            path.rmdir()  # only when empty: whatever the command did write stays


def check_folder(path: str | Path, option: str = "--out") -> Path:
    """An output folder that can be made and written, checked without creating anything."""
    out = Path(path)
    for part in out.parts:
        if len(part.encode()) > _longest_name(out):
            raise OutputRefused(f"cannot create output folder {out} ({option}): the name {part[:20]}... is "
                                f"{len(part.encode())} bytes long, more than the {_longest_name(out)} this file "
                                "system allows")
    existing = next(p for p in [out, *out.parents] if p.exists() or p.is_symlink() or p == Path("."))
    if not existing.is_dir():
        raise OutputRefused(f"{option} {out} is a file, not a folder" if existing == out else
                          f"cannot create output folder {out} ({option}): {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputRefused(f"cannot create output folder {out} ({option}): {existing} is not writable"
                          if existing != out else f"output folder {out} is not writable")
    return out


def clean_orphans(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Remove temporary files left by interrupted atomic writes of ``names`` in ``folder``."""
    return [tmp for name in names for tmp in clean_stale(Path(folder) / name)]


# -- files --

def tmp_prefix(name: str) -> str:
    """The start of a temporary file's name for ``name``: short enough to leave room in a 255-byte name."""
    return name[:100]


def check_output(path: str | Path, overwrite: bool = False, option: str | None = None) -> Path:
    """``path`` as an output file, or :class:`OutputRefused` in one line: a link, a device, a folder, a name
    too long, a folder that cannot be made, or an existing file unless ``overwrite``. Creates nothing."""
    named = f"{option} {path}" if option else str(path)
    if not str(path).strip():
        raise OutputRefused(f"{option or 'the output'} is empty: give a file name")
    out = Path(path)
    if len(out.name.encode()) > _longest_name(out.parent):
        raise OutputRefused(f"{named}: the file name is {len(out.name.encode())} bytes long, more than the "
                            f"{_longest_name(out.parent)} this file system allows")
    check_folder(out.parent, option or "the output's folder")
    _refuse_special(out, named)
    if out.exists() and not overwrite:
        raise OutputRefused(f"{named} exists: pass {'--overwrite' if option else 'overwrite=True'} to replace it, "
                             "or give another name")
    return out


def _longest_name(folder: Path) -> int:
    """The longest file name the file system holding ``folder`` (or its nearest existing parent) allows."""
    try:
        existing = next(p for p in [folder, *folder.parents] if os.path.isdir(p))
        return os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError, StopIteration):
        return 255


def _refuse_special(out: Path, named: str) -> None:
    """An :class:`OutputRefused` when ``out`` is a link, a folder or anything but a regular file."""
    if out.is_symlink():
        raise OutputRefused(f"{named} is a symbolic link (to {os.readlink(out)}): netslim does not write through "
                            "links; give the file itself, or remove the link")
    if not out.exists():
        return
    mode = out.stat().st_mode
    if stat.S_ISDIR(mode):
        raise OutputRefused(f"{named} is a folder; give a file name inside it")
    if not stat.S_ISREG(mode):
        raise OutputRefused(f"{named} is not a regular file (a device, pipe or socket): give a file name")
    if not os.access(out, os.W_OK):
        raise OutputRefused(f"{named} exists and is not writable")


@contextlib.contextmanager
def replacing(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder for a writer that needs a file name (``suffix``: for one
    that insists on an extension); when the block ends, it is renamed over ``path`` (see :func:`writing`)."""
    with writing(path, suffix) as (_, tmp):
        yield tmp


def write_atomic(path: str | Path, data: bytes | str, verify: Callable[[Path], object] | None = None) -> None:
    """Write ``data`` to ``path`` (see :func:`writing`): a kill leaves the old or the new file.
    ``verify(tmp)``: a check of the written file that must pass before it replaces ``path``."""
    view = memoryview(data.encode() if isinstance(data, str) else data).cast("B")
    with writing(path) as (fd, tmp):
        while view:
            view = view[os.write(fd, view):]
        if verify is not None:
            verify(tmp)


@contextlib.contextmanager
def writing(path: str | Path, suffix: str = "") -> Iterator[tuple[int, Path]]:
    """A temporary file next to ``path`` (its descriptor and path), renamed over ``path`` when the block
    ends, after an fsync. A failure (an exception, a full disk) removes it and keeps the previous ``path``:
    an ``OSError`` becomes :class:`DiskFull` or an OSError saying so; any other exception gets a note saying
    so. Refuses a link, a device or a folder at ``path``, and writing into a run folder another process holds.
    """
    path = Path(path)
    _refuse_special(path, str(path))
    with inside_run_folders(path.parent):
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            clean_stale(path)
            fd, tmp = tempfile.mkstemp(prefix=f".{tmp_prefix(path.name)}.", suffix=f".tmp{suffix}", dir=path.parent)
        except OSError as e:
            raise _failed(path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a live writer's file: clean_stale leaves it alone
            umask = os.umask(0)
            os.umask(umask)
            if stat.S_ISREG(os.fstat(fd).st_mode):  # (a test may stand a device in for the file: leave it be)
                os.fchmod(fd, 0o666 & ~umask)  # as open() would make it (mkstemp's file is private)
            yield fd, Path(tmp)
            _fsync(tmp)
            _refuse_special(path, str(path))  # nothing slipped in meanwhile
            os.replace(tmp, path)
            tmp = None
            _fsync(path.parent)
        except OSError as e:
            raise _failed(path, e) from None
        except Exception as e:
            if _disk_full(path.parent):  # a writer that reports ENOSPC as something else (a RuntimeError)
                raise _failed(path, OSError(errno.ENOSPC, "no space left")) from e
            e.add_note(_kept(path))
            raise
        finally:
            os.close(fd)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def clean_stale(path: str | Path) -> list[Path]:
    """Remove the temporary files of ``path`` that no live writer holds (left by a killed one)."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{_glob_escape(tmp_prefix(path.name))}.*.tmp*"):
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(tmp)
            removed.append(tmp)
        except OSError:
            pass  # being written by a live process
        finally:
            os.close(fd)
    return removed


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _fsync(path: str | Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _kept(path: Path) -> str:
    return f"the previous {path} is kept" if path.exists() else f"nothing was written to {path}"


def _disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 16
    except OSError:
        return False


def _failed(path: Path, error: OSError) -> OSError:
    """The one-line error of a failed write: a full disk as :class:`DiskFull`, else what the system said."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT) or _disk_full(path.parent):
        return DiskFull(errno.ENOSPC, f"cannot write {path}: the disk is full; {_kept(path)}")
    return OSError(error.errno, f"cannot write {path}: {error.strerror or error}; {_kept(path)}")


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

"""Where datasets are looked for, and checksummed downloads (urllib only)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

from .base import DatasetError

TIMEOUT_S = 60.0


def cache_root() -> Path:
    """``$NETSLIM_CACHE``, else ``$XDG_CACHE_HOME/netslim``, else ``~/.cache/netslim``."""
    if os.environ.get("NETSLIM_CACHE"):
        return Path(os.environ["NETSLIM_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "netslim"


def cache_dir(name: str) -> Path:
    """The per-dataset cache directory, ``cache_root() / name``."""
    return cache_root() / name


def search_dirs(name: str, data_dir: str | Path | None, system: Iterable[str | Path] = ()) -> list[Path]:
    """Directories to look in, in order: ``data_dir``, ``data_dir/name``, system locations, the cache."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs += [Path(data_dir).expanduser(), Path(data_dir).expanduser() / name]
    dirs += [Path(d) for d in system]
    dirs.append(cache_dir(name))
    return list(dict.fromkeys(dirs))


def target_dir(name: str, data_dir: str | Path | None) -> Path:
    """Where downloads go: ``data_dir`` if given, else the cache."""
    return Path(data_dir).expanduser() if data_dir is not None else cache_dir(name)


def where(dirs: Sequence[Path]) -> str:
    """The searched directories, for error messages."""
    return ", ".join(str(d) for d in dirs)


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_md5(path: str | Path, md5: str) -> None:
    """Raise :class:`DatasetError` unless ``path`` has checksum ``md5``."""
    got = md5sum(path)
    if got != md5:
        raise DatasetError(f"{path}: bad md5 checksum {got} (expected {md5}): the file is corrupt or not the "
                           f"official one; delete it and download again")


def fetch_url(url: str, dest: Path, md5: str | None, what: str) -> Path:
    """Fetch ``url`` to ``dest`` (atomically), verifying ``md5``; a failure names the URL and ``dest``'s folder."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            while block := response.read(1 << 20):
                h.update(block)
                out.write(block)
        if md5 is not None and h.hexdigest() != md5:
            raise DatasetError(f"{what}: download of {url} has md5 {h.hexdigest()}, expected {md5}: "
                               f"put a good copy of {dest.name} in {dest.parent}")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as e:
        if isinstance(e, DatasetError):
            raise
        reason = getattr(e, "reason", None) or e
        raise DatasetError(f"{what}: download of {url} failed ({reason}); without network, put {dest.name} "
                           f"in {dest.parent} by hand") from e
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def extract_tar(archive: Path, member: str, into: Path) -> Path:
    """Extract ``archive`` (which holds the folder ``member``) so that ``into/member`` appears atomically."""
    final = into / member
    staging = Path(tempfile.mkdtemp(prefix=f".{member}.", dir=into))
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tar.extractall(staging)  # noqa: S202
        if not (staging / member).is_dir():
            raise DatasetError(f"{archive}: archive has no {member}/ folder: delete it and download again")
        if not final.exists():
            os.replace(staging / member, final)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(f"{archive}: unreadable archive ({e}): delete it and download again") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final

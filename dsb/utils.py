"""Small shared helpers: atomic writes, checks of output paths."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from dsb.errors import DsbError

def _umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _final_mode(path: Path) -> int:
    """An existing file keeps its permissions; a new one gets what ``open`` would give
    (mkstemp's temporary files are 0600, unreadable to anyone else)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse, before any work, an output file path that cannot be written.

    The path must not be a folder, and its nearest existing parent must be a writable
    folder (not a file). Missing parents are fine (they are created on writing).

    Raises
    ------
    DsbError
        Naming the path and what is wrong with it.
    """
    path = Path(path)
    if path.is_dir():
        raise DsbError(f"{what} {path}: is an existing folder; give a file name (e.g. {path / 'submission.csv'})")
    if path.exists() and not path.is_file():
        raise DsbError(f"{what} {path}: exists and is not a regular file")
    if not path.name or path.name in (".", ".."):
        raise DsbError(f"{what} {path}: not a file name")
    _check_writable_above(path, path.parent, what)
    return path


def _check_writable_above(path: Path, start: Path, what: str) -> None:
    """The nearest existing folder at or above ``start`` must be a writable folder."""
    parent = start
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise DsbError(f"{what} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DsbError(f"{what} {path}: the folder {parent} is not writable")


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Refuse, before any work, an output folder that is a file or under a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DsbError(f"{what} {path}: exists and is not a folder")
    _check_writable_above(path, path, what)
    return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success.

    A crash or exception inside the ``with`` block leaves any existing ``path`` untouched
    and no partial file behind.
    """
    path = Path(path)
    if path.is_dir():
        raise DsbError(f"{path}: is a folder; cannot write a file there")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise DsbError(f"{path}: cannot write ({exc.strerror or exc}: {exc.filename or path.parent})") from None
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, _final_mode(path))
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()

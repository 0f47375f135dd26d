"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.

Generic on purpose: the trainer writes run directories with it and export/ writes .onnx files.
``folder_problem`` checks an output folder a user names before any work (every part's commands use it), and
``folder_to_read_problem`` a folder to read.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# mkstemp creates files readable by the owner only; a finished file gets the usual mode.
_FILE_MODE = _default_file_mode()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file lives in the same directory, so the final ``os.replace`` is atomic.
    On any exception it is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    temp = Path(temp_name)
    try:
        yield temp
        os.chmod(temp, _FILE_MODE)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as temp:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def folder_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a folder to write in (made if missing), or None: a file in the way, or no permission."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:  # not even the working folder exists: let the write say so
        return None
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def folder_to_read_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a folder to read, in a few words ("no such folder", "a file, not a folder"), or None."""
    path = Path(path)
    if not path.exists():
        return "no such folder"
    if not path.is_dir():
        return "a file, not a folder"
    if not os.access(path, os.R_OK | os.X_OK):
        return "cannot read it (permission denied)"
    return None

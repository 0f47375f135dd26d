"""Checks of the files and folders a user names on the command line, each failing with one sentence naming the path.

Commands run them before any work, so a missing, truncated or foreign model file, or an output folder that
cannot be made, ends the command in one line instead of a traceback minutes later. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecnn.train.files import folder_problem  # defined in the lowest layer; serve/ and benchmarks/ import it from here

__all__ = ["ModelFileError", "UserFileError", "check_model_file", "check_readable", "folder_problem", "open_session",
           "read_user_file"]


class UserFileError(ValueError):
    """A file a flag names that is missing, a folder or unreadable; the message names the flag and the file."""


def read_user_file(path: str | Path, flag: str) -> bytes:
    """The bytes of the file ``flag`` names (``--token-file``, ``--tls-ca``, ...), or a UserFileError in one
    sentence naming both: ``--token-file nosuch.token: no such file``."""
    path = Path(path)
    try:
        return path.read_bytes()
    except OSError as error:
        raise UserFileError(f"{flag} {path}: {_unreadable(error)}") from None


def check_readable(path: str | Path, flag: str) -> Path:
    """``path`` if it is a file this process can open, else the UserFileError ``read_user_file`` would raise
    (for files read later, or by another library: a model, a report)."""
    path = Path(path)
    try:
        with path.open("rb"):
            return path
    except OSError as error:
        raise UserFileError(f"{flag} {path}: {_unreadable(error)}") from None


def _unreadable(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "a folder, not a file"
    if isinstance(error, PermissionError):
        return "cannot read it (permission denied)"
    return f"cannot read it ({error.strerror or error})"


class ModelFileError(ValueError):
    """A model file that is missing, a folder, or not an ONNX model onnxruntime can load; the message names it."""


def _load_errors() -> tuple[type[Exception], ...]:
    """What onnxruntime raises for a file that is not a model it can load (bad protobuf, bad graph, unknown operator)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (state.Fail, state.InvalidArgument, state.NoSuchFile, state.NoModel, state.InvalidProtobuf,
            state.InvalidGraph, state.NotImplemented)


def check_model_file(path: str | Path) -> Any:
    """Open ``path`` with onnxruntime (CPU, no graph optimisation: quick) and return the session."""
    import onnxruntime as ort

    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not an ONNX model file")
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return open_session(path, options, ["CPUExecutionProvider"])


def open_session(
    path: str | Path, options: Any, providers: list[str], *, catching: tuple[type[Exception], ...] | None = None
) -> Any:
    """An onnxruntime session of ``path``; what onnxruntime raises for a file it cannot load (``catching``,
    by default its load errors) becomes a ModelFileError naming the file and onnxruntime's reason."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except (catching or _load_errors()) as exc:
        reason = str(exc).split(" : ")[-1].strip() or type(exc).__name__
        raise ModelFileError(f"{path}: not an ONNX model onnxruntime can load ({reason})") from None

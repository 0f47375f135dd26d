"""Torch-free helpers every part's commands share, in the lowest layer so train/, export/, serve/ and
benchmarks/ can all import them without a back-edge.

``needs_extra``: one sentence instead of a ModuleNotFoundError traceback when a command needs an extra
that is not installed. The edge install (`pip install edgecnn[serve]`) has no torch, onnx or matplotlib;
`edgecnn train`, `evaluate` and `export` need the `train` extra. Commands wrap their heavy imports and
work in ``needs_extra``.

``parse_image_size``: HEIGHTxWIDTH or one number, as `edgecnn train` and `edgecnn export` take it; each
command wraps its ValueError in its own error and message.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import typer

# Top-level modules each extra brings, as `import` names.
EXTRA_MODULES = {
    "train": {"torch", "onnx", "onnxscript", "safetensors", "matplotlib", "onnxruntime"},
    "serve": {"onnxruntime", "grpc", "grpc_health", "grpc_reflection", "google", "prometheus_client"},
    "ray": {"ray", "pyarrow"},
}


@contextlib.contextmanager
def needs_extra(extra: str, command: str) -> Iterator[None]:
    """Turn a missing module of ``extra`` (or of several, comma-separated: "train,serve") into
    "error: `edgecnn COMMAND` needs ..." and exit 1."""
    names = extra.split(",")
    try:
        yield
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if not any(missing in EXTRA_MODULES[name] for name in names):
            raise
        what = f"the {' and '.join(names)} extra{'s' if len(names) > 1 else ''}"
        typer.echo(f"error: `edgecnn {command}` needs {what} ({missing} is not installed): "
                   f"pip install 'edgecnn[{extra}]'", err=True)
        raise typer.Exit(1) from None


def parse_image_size(text: str) -> tuple[int, int]:
    """'64x64' or '64' -> (height, width); ValueError for anything else. The sizes are not checked: each
    command says which it allows."""
    try:
        parts = [int(part) for part in text.lower().split("x")]
    except ValueError:
        raise ValueError(f"{text!r} is not HEIGHTxWIDTH or one number") from None
    if len(parts) not in (1, 2):
        raise ValueError(f"{text!r} is not HEIGHTxWIDTH or one number")
    return (parts[0], parts[-1])

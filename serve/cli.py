"""The `edgecnn` command: one typer app, each part registering its own commands.

This module and every part's `cli.py` are torch-free at import: heavy libraries load
inside the command that needs them, so `edgecnn serve|predict|bench` run on the edge
install (`pip install edgecnn[serve]`) and `--help` is instant.
"""

from __future__ import annotations

import typer

from edgecnn.benchmarks import cli as bench_cli
from edgecnn.export import cli as export_cli
from edgecnn.serve import classify_cli
from edgecnn.serve import commands as serve_commands
from edgecnn.train import cli as train_cli

app = typer.Typer(
    name="edgecnn",
    help="Train small CNN image classifiers, export them to ONNX (fp32/int8/fp16), "
    "serve them over the Open Inference Protocol gRPC API, and benchmark their latency.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for part in (train_cli, export_cli, serve_commands, classify_cli, bench_cli):
    part.register(app)


def main() -> None:
    app()

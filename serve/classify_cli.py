"""`edgecnn classify`: flags, defaults and help come from ClassifySettings; the work (and every heavy
import: onnxruntime, Ray, pyarrow) happens in edgecnn.serve.classify, inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecnn.serve.classify import ClassifySettings, Engine, help_of

S = ClassifySettings  # its class attributes are the defaults


def _option(name: str, *flags: str, **kwargs):
    return typer.Option(*flags, help=help_of(name), **kwargs)


def classify(
    input: Annotated[str, typer.Argument(help=help_of("input"), show_default=False)],
    model: Annotated[Path, _option("model", "--model", "-m", show_default=False)],
    output: Annotated[Path, _option("output", "--output", "-o", show_default=False)],
    top_k: Annotated[int, _option("top_k", min=1)] = S.top_k,
    batch_size: Annotated[int, _option("batch_size", min=1)] = S.batch_size,
    decode_threads: Annotated[int, _option("decode_threads", min=0)] = S.decode_threads,
    intra_op_threads: Annotated[int, _option("intra_op_threads", min=0)] = S.intra_op_threads,
    max_image_pixels: Annotated[int, _option("max_image_pixels", min=1)] = S.max_image_pixels,
    engine: Annotated[Engine, _option("engine")] = S.engine,
    ray_address: Annotated[Optional[str], _option("ray_address", show_default=False)] = S.ray_address,
    ray_cpus: Annotated[int, _option("ray_cpus", min=0)] = S.ray_cpus,
    ray_actors: Annotated[int, _option("ray_actors", min=0)] = S.ray_actors,
    ray_cpus_per_actor: Annotated[int, _option("ray_cpus_per_actor", min=1)] = S.ray_cpus_per_actor,
    progress: Annotated[bool, _option("progress")] = S.progress,
) -> None:
    """Classify a folder (recursively) or a glob of images offline into one CSV or Parquet file."""
    flags = dict(locals())  # every parameter above is a ClassifySettings field of the same name
    from edgecnn.export.metadata import MetadataError
    from edgecnn.serve.classify import ClassifyError
    from edgecnn.serve.classify import classify as run

    try:
        report = run(ClassifySettings(**flags))
    except (ClassifyError, MetadataError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(report.summary())


def register(app: typer.Typer) -> None:
    """Add `classify` to the root `edgecnn` app."""
    app.command()(classify)

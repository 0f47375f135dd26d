"""`edgecnn serve` and `edgecnn predict`. Heavy imports stay inside the commands (fast --help)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from edgecnn.serve.extras import needs_extra
from edgecnn.serve.images import FORMATS_TEXT
from edgecnn.serve.settings import ModelControlMode, Provider, ServeSettings, help_of

S = ServeSettings  # its class attributes are the defaults


def _option(name: str, **kwargs):
    return typer.Option(help=help_of(name), **kwargs)


def serve(
    model: Annotated[Path, typer.Argument(help=help_of("model"), show_default=False)],
    host: Annotated[str, _option("host")] = S.host,
    port: Annotated[int, _option("port")] = S.port,
    metrics: Annotated[bool, _option("metrics")] = S.metrics,
    metrics_port: Annotated[int, _option("metrics_port")] = S.metrics_port,
    provider: Annotated[Provider, _option("provider")] = S.provider,
    model_control_mode: Annotated[ModelControlMode, _option("model_control_mode")] = S.model_control_mode,
    repository_poll_s: Annotated[float, _option("repository_poll_s")] = S.repository_poll_s,
    load_model: Annotated[Optional[list[str]], _option("load_model", show_default=False)] = None,
    max_batch_size: Annotated[int, _option("max_batch_size")] = S.max_batch_size,
    max_queue_delay_us: Annotated[int, _option("max_queue_delay_us")] = S.max_queue_delay_us,
    max_queue_size: Annotated[int, _option("max_queue_size")] = S.max_queue_size,
    workers: Annotated[int, _option("workers")] = S.workers,
    instances: Annotated[int, _option("instances")] = S.instances,
    intra_op_threads: Annotated[int, _option("intra_op_threads")] = S.intra_op_threads,
    single_thread_below: Annotated[int, _option("single_thread_below")] = S.single_thread_below,
    inter_op_threads: Annotated[int, _option("inter_op_threads")] = S.inter_op_threads,
    ort_spinning: Annotated[bool, _option("ort_spinning")] = S.ort_spinning,
    gil_switch_interval_us: Annotated[int, _option("gil_switch_interval_us")] = S.gil_switch_interval_us,
    decode_threads: Annotated[int, _option("decode_threads")] = S.decode_threads,
    max_message_bytes: Annotated[int, _option("max_message_bytes")] = S.max_message_bytes,
    max_request_images: Annotated[int, _option("max_request_images")] = S.max_request_images,
    max_image_pixels: Annotated[int, _option("max_image_pixels")] = S.max_image_pixels,
    max_queue_bytes: Annotated[int, _option("max_queue_bytes")] = S.max_queue_bytes,
    max_decode_backlog: Annotated[int, _option("max_decode_backlog")] = S.max_decode_backlog,
    max_concurrent_rpcs: Annotated[int, _option("max_concurrent_rpcs")] = S.max_concurrent_rpcs,
    max_concurrent_streams: Annotated[int, _option("max_concurrent_streams")] = S.max_concurrent_streams,
    max_metadata_bytes: Annotated[int, _option("max_metadata_bytes")] = S.max_metadata_bytes,
    max_connection_age_s: Annotated[float, _option("max_connection_age_s")] = S.max_connection_age_s,
    max_connection_age_grace_s: Annotated[float, _option("max_connection_age_grace_s")] = S.max_connection_age_grace_s,
    keepalive_time_s: Annotated[float, _option("keepalive_time_s")] = S.keepalive_time_s,
    keepalive_timeout_s: Annotated[float, _option("keepalive_timeout_s")] = S.keepalive_timeout_s,
    keepalive_permit_without_calls: Annotated[bool, _option("keepalive_permit_without_calls")] = (
        S.keepalive_permit_without_calls
    ),
    min_ping_interval_s: Annotated[float, _option("min_ping_interval_s")] = S.min_ping_interval_s,
    max_ping_strikes: Annotated[int, _option("max_ping_strikes")] = S.max_ping_strikes,
    tls_cert: Annotated[Optional[Path], _option("tls_cert", show_default=False)] = S.tls_cert,
    tls_key: Annotated[Optional[Path], _option("tls_key", show_default=False)] = S.tls_key,
    tls_client_ca: Annotated[Optional[Path], _option("tls_client_ca", show_default=False)] = S.tls_client_ca,
    auth_token_file: Annotated[Optional[Path], _option("auth_token_file", show_default=False)] = S.auth_token_file,
    auth_health: Annotated[bool, _option("auth_health")] = S.auth_health,
    reflection: Annotated[Optional[bool], _option("reflection", show_default=False)] = S.reflection,
    metrics_host: Annotated[str, _option("metrics_host")] = S.metrics_host,
    trim_memory_idle_s: Annotated[float, _option("trim_memory_idle_s")] = S.trim_memory_idle_s,
    ort_arena: Annotated[bool, _option("ort_arena")] = S.ort_arena,
    drain_delay_s: Annotated[float, _option("drain_delay_s")] = S.drain_delay_s,
    grace: Annotated[float, _option("grace")] = S.grace,
    log_level: Annotated[str, _option("log_level")] = S.log_level,
) -> None:
    """Serve MODEL.onnx or a model repository over the Open Inference Protocol (gRPC), with dynamic batching.

    Clients send uint8 pixels, or encoded images that the server decodes: PNG or JPEG (.png, .jpg, .jpeg) only.
    """
    flags = dict(locals())  # every parameter above is a ServeSettings field of the same name
    from edgecnn.export.metadata import MetadataError

    with needs_extra("serve", "serve"):  # a train-only install has no gRPC
        from edgecnn.serve.model import ProviderUnavailable
        from edgecnn.serve.server import run

    try:
        code = run(ServeSettings(**flags))
    except (ValueError, FileNotFoundError, MetadataError, ProviderUnavailable, RuntimeError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def predict(
    images: Annotated[list[Path], typer.Argument(
        help=f"Image files, {FORMATS_TEXT}: the formats the server decodes. Each is reported on its own: a row "
        "of labels, or an error line (exit code 1).", show_default=False)],
    server: Annotated[str, typer.Option(
        help="Server address HOST:PORT (no scheme); several comma-separated, or dns:///NAME:PORT, for round robin "
        "with failover."
    )] = "localhost:8001",
    model: Annotated[str, typer.Option(help="Model name (default: the only model the server serves).")] = "",
    version: Annotated[str, typer.Option(help="Model version (default: the highest).")] = "",
    top_k: Annotated[int, typer.Option(help="Labels to show per image.", min=1)] = 3,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.", min=0.001)] = 10.0,
    tls: Annotated[bool, typer.Option(help="Use TLS, trusting the system's roots (or --tls-ca).")] = False,
    tls_ca: Annotated[Optional[Path], typer.Option(
        help="CA bundle (PEM) the server's certificate must chain to; turns TLS on.", show_default=False)] = None,
    tls_cert: Annotated[Optional[Path], typer.Option(
        help="Client certificate (PEM) for a mutual-TLS server, with --tls-key.", show_default=False)] = None,
    tls_key: Annotated[Optional[Path], typer.Option(help="Private key (PEM) of --tls-cert.", show_default=False)] = None,
    token_file: Annotated[Optional[Path], typer.Option(
        help="File holding the bearer token to send (its first line's first field); never pass a token itself.",
        show_default=False)] = None,
) -> None:
    """Classify images with a running `edgecnn serve` and print the top labels and scores of each."""
    with needs_extra("serve", "predict"):  # a train-only install has no gRPC
        import grpc

        from edgecnn.serve.client import ChannelSecurity, InferenceClient, describe_rpc_error

    try:  # the flags' files first: a bad one ends the command before any image is read
        security = ChannelSecurity.from_files(tls=tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                                              token_file=token_file)
    except ValueError as exc:
        _fail(str(exc))
    readable, failures = _read_images(images)
    for path, reason in failures:  # each bad image in a line of its own; the others are still classified
        typer.echo(f"error: {path}: {reason}", err=True)
    if readable:
        try:
            with InferenceClient(server, timeout=timeout, security=security) as client:
                result = client.infer(model, [data for _, data in readable], version=version, top_k=top_k)
        except ValueError as exc:  # the --server address
            _fail(str(exc))
        except grpc.RpcError as error:
            _fail(f"{server}: {describe_rpc_error(error, security)}")
        _print_results([path for path, _ in readable], result, server)
    if failures:
        raise typer.Exit(1)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _print_results(paths: list[Path], result, server: str) -> None:
    """One table: each image's top labels, best first."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.model_name} (version {result.model_version}) at {server}")
    for column in ("image", "rank", "label", "index", "score"):
        table.add_column(column, justify="left" if column in ("image", "label") else "right")
    for path, classes in zip(paths, result.top_k):
        for rank, c in enumerate(classes, start=1):
            table.add_row(str(path) if rank == 1 else "", str(rank), c.label, str(c.index), f"{c.score:.4f}")
    Console().print(table)


def _read_images(paths: list[Path]) -> tuple[list[tuple[Path, bytes]], list[tuple[Path, str]]]:
    """The bytes of each file that decodes here as the server will decode it, and why each other one does not
    (the server could only say "image 3")."""
    from edgecnn.serve.images import ImageDecodeError, decode_image
    from edgecnn.serve.settings import PILLOW_PIXEL_LIMIT

    readable, failures = [], []
    for path in paths:
        try:
            data = path.read_bytes()
            decode_image(data, 1, 1, 1, max_pixels=PILLOW_PIXEL_LIMIT)
            readable.append((path, data))
        except FileNotFoundError:
            failures.append((path, "no such file"))
        except IsADirectoryError:
            failures.append((path, "a folder, not an image file"))
        except OSError as exc:
            failures.append((path, f"cannot read it ({exc.strerror or exc})"))
        except ImageDecodeError as exc:
            failures.append((path, str(exc)))
    return readable, failures


def register(app: typer.Typer) -> None:
    """Add this part's commands to the root `edgecnn` app."""
    app.command()(serve)
    app.command()(predict)

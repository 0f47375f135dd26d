"""Training on several processes: torchrun's launcher and DDP (gloo on CPU, NCCL on CUDA).

``launch(nproc, fn, *args)`` starts ``nproc`` local workers with torch's own elastic launcher (what
``torchrun --standalone --nproc-per-node N`` does: a c10d rendezvous on a free localhost port, no
restarts; one dying worker stops the others). Each worker, like a process started by ``torchrun``
itself, finds RANK, WORLD_SIZE and LOCAL_RANK in its environment; ``Group.join`` turns them into a
process group. A run on one process uses ``Group.single()``, whose collectives do nothing, so the
training loop has one code path.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Keep the elastic agent's own log lines (a traceback per stopped worker) off the user's screen:
# a failed launch becomes one LaunchError sentence instead.
_NOISY_LOGGERS = ("torch.distributed.elastic", "torch.multiprocessing", "torch.distributed.launcher")


class LaunchError(RuntimeError):
    """A multi-process run that could not start or that one of its processes ended.

    ``error_type`` names the class of a worker's bad-input error (see ``record_error``), else is None."""

    def __init__(self, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type


class UserError(Exception):
    """A worker's bad-input error (missing data, a run directory in the way), handed to the launcher as text."""


def under_torchrun() -> bool:
    """True in a process started by torchrun (or by ``launch``): its rank is in the environment."""
    return all(name in os.environ for name in ENV_VARS)


def env_world_size() -> int:
    """WORLD_SIZE under torchrun, else 1."""
    return int(os.environ["WORLD_SIZE"]) if under_torchrun() else 1


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class Group:
    """This process's place among the training processes; collectives are no-ops on one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: not distributed

    @classmethod
    def single(cls) -> "Group":
        return cls()

    @classmethod
    def join(cls, device_kind: str) -> "Group":
        """Join the process group described by the torchrun environment: NCCL for CUDA, gloo for CPU."""
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        if world_size == 1:
            return cls()
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if not dist.is_initialized():
            if backend == "nccl":
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend)
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sums of ``values`` over all processes (float64, so counts stay exact)."""
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process (any picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def from_rank_zero(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` as computed on rank 0, on every process; an exception it raises is raised on all of them."""
        if not self.distributed:
            return fn()
        result = error = None
        if self.is_main:
            try:
                result = fn()
            except Exception as exc:  # noqa: BLE001 - handed to every rank, raised there
                error = exc
        result, error = self.broadcast((result, error))
        if error is not None:
            raise error
        return result

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order, on every process."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every process."""
        if self.distributed:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextmanager
    def rank_zero_first(self) -> Iterator[None]:
        """Run the block on rank 0 first, then on the others (e.g. a download into a shared folder)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def leave(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def launch(nproc: int, fn: Callable[..., Any], *args: Any) -> dict[int, Any]:
    """Run ``fn(*args)`` on ``nproc`` local processes under torch's elastic launcher; their return values by rank.

    ``fn`` must be importable by name (the workers are spawned, not forked). A worker that fails with an
    exception recorded through ``record_error`` or that dies (a signal, a non-zero exit) stops all of
    them, and this raises LaunchError naming the first rank that failed and why.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise LaunchError(f"--nproc must be at least 1, got {nproc}")
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()), rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # torchrun --standalone: a TCP store on a free port
        max_restarts=0, monitor_interval=0.1, start_method="spawn",
    )
    noisy = [logging.getLogger(name) for name in logging.root.manager.loggerDict if name.startswith(_NOISY_LOGGERS)]
    levels = {logger: logger.level for logger in noisy}
    for logger in noisy:
        logger.setLevel(logging.CRITICAL)
    try:
        return elastic_launch(config, fn)(*args)
    except SignalException as exc:  # the launcher was told to stop; it stopped the workers first
        if exc.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None  # Ctrl-C: as on one process
        raise LaunchError(f"stopped by {exc.sigval.name}: the {nproc} training processes were ended") from None
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        message = failure.message if isinstance(failure.message, dict) else {}
        callstack = message.get("extraInfo", {}).get("py_callstack", "")
        if "Traceback" in callstack and not str(message.get("message", "")).startswith(UserError.__name__):
            print(f"process {rank} of {nproc}: {callstack.rstrip()}", file=sys.stderr)  # a bug: keep its traceback
        raise LaunchError(describe_failure(rank, failure, nproc), _user_error_type(failure)) from None
    finally:
        for logger, level in levels.items():
            logger.setLevel(level)


def describe_failure(rank: int, failure: Any, nproc: int) -> str:
    """One sentence on why a worker stopped the run: its recorded error, else its exit code or signal."""
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message")
    prefix = f"{UserError.__name__}: "
    if isinstance(message, str) and message.startswith(prefix):
        return message[len(prefix):].partition(": ")[2]  # the same sentence one process would have said
    stopped = "the other processes were stopped"
    if failure.signal_name() != "<N/A>":  # killed: out of memory, a user's kill, a crash in native code
        return f"process {rank} of {nproc} was killed by {failure.signal_name()}; {stopped}"
    if isinstance(message, str) and message and not message.startswith("To enable traceback"):
        return f"process {rank} of {nproc} failed: {message}; {stopped}"
    return f"process {rank} of {nproc} exited with code {failure.exitcode}; {stopped} (its output above says why)"


def _user_error_type(failure: Any) -> str | None:
    message = failure.message.get("message") if isinstance(failure.message, dict) else failure.message
    prefix = f"{UserError.__name__}: "
    if isinstance(message, str) and message.startswith(prefix):
        return message[len(prefix):].partition(": ")[0]
    return None


def record_error(exc: BaseException) -> None:
    """Hand a worker's bad-input error to the launcher (torchelastic's error file) as its class name and
    one-line message, without a traceback; ``launch`` raises it as a LaunchError with that message."""
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    ErrorHandler().record_exception(UserError(f"{type(exc).__name__}: {exc}"))  # type: ignore[arg-type]

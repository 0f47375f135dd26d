"""The models a server serves, and how they change while it runs (Triton's model control modes).

    none      everything in the repository (or the one file) at start; nothing changes after
    poll      the repository is scanned every --repository-poll-s: new and changed versions are
              loaded, removed ones unloaded
    explicit  only --load-model NAME at start; RepositoryModelLoad / Unload change the rest

A new or changed version is loaded and warmed up on a worker thread beside the one serving, then
swapped in on the event loop (one dict assignment); requests already holding the old one finish on
it, and only then are its compute threads stopped and its sessions let go. A load that fails (a
broken or half-copied file) leaves the serving version in place and records why in the index. A
repository entry that serves nothing (a misnamed file or folder) is in the index with why, and logged
once when it appears; at start, a repository in which nothing serves is one error listing why.

The request path reads two dicts and changes nothing; every change runs under one asyncio lock.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import grpc

from edgecnn.export.metadata import MetadataError
from edgecnn.serve.batcher import Batcher
from edgecnn.serve.errors import ModelNotFound, shown
from edgecnn.serve.metrics import Metrics
from edgecnn.serve.model import Model, largest_request_bytes, load_model
from edgecnn.serve.repository import (
    ConfigLimits,
    ModelConfig,
    ModelScan,
    ModelSource,
    RepositoryError,
    Signature,
    find_models,
    model_folders,
    name_problem,
    nothing_to_serve,
    scan_model,
    version_key,
)
from edgecnn.serve.settings import ServeSettings

log = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING = "READY", "UNAVAILABLE", "LOADING"
# How long a retired version waits for the requests still holding it before it stops anyway.
RETIRE_TIMEOUT_S = 30.0


class ControlError(Exception):
    """A load or unload that cannot be done; ``code`` is the gRPC status it maps to."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION) -> None:
        super().__init__(message)
        self.code = code


class LoadRefused(ValueError):
    """A version that opened but must not serve (its requests would not fit the receive limit)."""


@dataclass(eq=False)
class Served:
    """One loaded version: what a request needs, and how many requests hold it right now."""

    model: Model
    batcher: Batcher
    signature: Signature | None  # of the file it was loaded from (None: not checked)
    config: ModelConfig
    in_flight: int = 0


class ModelStore:
    def __init__(
        self,
        settings: ServeSettings,
        make_batcher: Callable[[Model, ServeSettings], Batcher],
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self._make_batcher = make_batcher
        self._metrics = metrics
        self._served: dict[str, dict[str, Served]] = {}
        self._latest: dict[str, Served] = {}  # the highest served version of each model
        self._index: dict[tuple[str, str], tuple[str, str]] = {}  # (name, version) -> (state, reason)
        self._seen: dict[tuple[str, str], Signature | None] = {}  # poll: signatures of the last scan
        self._failed: dict[tuple[str, str], Signature | None] = {}  # files that failed to load
        self._problems: dict[str, dict[str, str]] = {}  # name -> version -> why its folder serves nothing
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()
        self._deferred: list[tuple[Model, ServeSettings]] | None = []  # instance sessions to open after start
        self._config_limits = ConfigLimits.of(settings)
        self.repository = settings.model if settings.model.is_dir() else None
        # The receive limit the server derived at start from the models it loaded (None: --max-message-bytes
        # was given): a version loaded later whose largest request would not fit it is refused.
        self.receive_limit: int | None = None
        # Told when a model starts or stops serving (the server keeps per-model health with it).
        self.on_serving_changed: Callable[[str, bool], None] = lambda name, serving: None

    # --- the request path (event loop, no lock) ---------------------------------------------

    def served(self, name: str, version: str = "") -> Served:
        """The served version ``version`` of ``name`` (empty: the highest); an empty name is the only model."""
        if not name and len(self._served) == 1:
            name = next(iter(self._served))
        versions = self._served.get(name)
        if not versions:
            wanted = f"model {shown(name)} is not served" if name else "a model name is required"
            raise ModelNotFound(f"{wanted}; models: {', '.join(self.names()) or 'none'}")
        if not version:
            return self._latest[name]
        served = versions.get(version)
        if served is None:
            raise ModelNotFound(
                f"model {shown(name)} has no version {shown(version)}; versions: {', '.join(self.versions(name))}"
            )
        return served

    def get(self, name: str, version: str = "") -> Model:
        return self.served(name, version).model

    def __iter__(self):
        for versions in list(self._served.values()):
            yield from (served.model for served in list(versions.values()))

    def batchers(self) -> dict[tuple[str, str], Batcher]:
        """Every serving version's batcher; safe from other threads (list() copies a dict under the GIL)."""
        return {(n, v): s.batcher for n, versions in list(self._served.items()) for v, s in list(versions.items())}

    def names(self) -> list[str]:
        return sorted(self._served)

    def versions(self, name: str) -> list[str]:
        return sorted(self._served.get(name, {}), key=version_key)

    def index(self, ready_only: bool = False) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) of every version the server knows of, by name and version."""
        rows = [(n, v, state, reason) for (n, v), (state, reason) in self._index.items()
                if not ready_only or state == READY]
        return sorted(rows, key=lambda r: (r[0], version_key(r[1])))

    # --- start, poll, explicit control --------------------------------------------------------

    async def start(self) -> None:
        """The models of the control mode at start; any failure here stops the server from starting."""
        s = self.settings
        if self.repository is None:
            if s.model_control_mode != "none":
                raise ValueError(f"--model-control-mode {s.model_control_mode} needs a repository folder, "
                                 f"not the single file {s.model}")
            source = find_models(s.model)[0]
            await self._load_versions(None, {"": (source, _signature(source))}, ModelConfig(), strict=True)
            return
        if s.model_control_mode == "explicit":
            names = list(s.load_model)
            missing = [name for name in names if not (self.repository / name).is_dir()]
            if missing:
                raise ValueError(f"--load-model {missing[0]}: the repository {self.repository} has no such model folder")
        else:
            names = await asyncio.to_thread(model_folders, self.repository)
        for name in names:
            async with self._lock:
                scan = await self._scan(name)
                # A folder with no version to load is logged and indexed, never fatal on its own.
                await self._sync(name, scan, strict=bool(scan.versions))
            if s.model_control_mode == "explicit" and not self._served.get(name):
                raise ValueError(f"--load-model {name}: {self._nothing_to_serve(name)}")
        if s.model_control_mode != "explicit" and not self._served:
            raise RepositoryError(await asyncio.to_thread(nothing_to_serve, self.repository, self._problems))

    def open_deferred_instance_sessions(self) -> None:
        """The instance sessions of the models loaded at start (opening them meanwhile would skew their timing)."""
        deferred, self._deferred = self._deferred or [], None
        for model, settings in deferred:
            model.open_instance_sessions_in_background(settings)

    async def poll_forever(self) -> None:
        """--model-control-mode poll: rescan every --repository-poll-s until cancelled."""
        while True:
            await asyncio.sleep(self.settings.repository_poll_s)
            try:
                await self.poll_once()
            except Exception:  # noqa: BLE001 - a bad scan must not end polling
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        # The folders are read on a worker thread (a slow disk must not stall requests); each is read
        # once, under the lock, just before its changes are decided.
        names = set(await asyncio.to_thread(model_folders, self.repository)) | set(self._served) | set(self._problems)
        for name in sorted(names):
            async with self._lock:
                await self._sync(name, await self._scan(name), wait_until_stable=True)

    async def load(self, name: str) -> None:
        """RepositoryModelLoad: (re)load ``name`` from the repository, as its version policy says."""
        self._check_control(name)
        if not self._is_model_folder(name):
            raise ControlError(f"the repository has no model folder {shown(name)}", grpc.StatusCode.NOT_FOUND)
        async with self._lock:
            failed = await self._sync(name, reload_all=True)
        if failed or not self._served.get(name):
            why = "; ".join(f"version {v}: {reason}" if v else reason for v, reason in failed)
            raise ControlError(f"model {shown(name)} could not be loaded: {why or self._nothing_to_serve(name)}")

    async def unload(self, name: str) -> None:
        """RepositoryModelUnload: stop serving every version of ``name`` (nothing to do if none is served,
        NOT_FOUND if the repository has no such model either)."""
        self._check_control(name)
        if name not in self._served and not self._is_model_folder(name):
            raise ControlError(f"no model {shown(name)} is served and the repository has no such model folder",
                               grpc.StatusCode.NOT_FOUND)
        async with self._lock:
            for version in list(self._served.get(name, {})):
                self._retire(name, version, reason="unloaded", keep_in_index=True)
        await self.wait_retired()

    def _nothing_to_serve(self, name: str) -> str:
        """Why model ``name`` has no version to serve: the mistakes in its folder, or its version policy."""
        problems = self._problems.get(name)
        if problems:
            return "no version of it to serve: " + "; ".join(reason for _, reason in sorted(problems.items()))
        return "no version of it to serve (NAME/VERSION/model.onnx, and the version policy of its config.json)"

    def _check_control(self, name: str) -> None:
        if self.settings.model_control_mode != "explicit":
            raise ControlError(f"model control mode is {self.settings.model_control_mode}: start the server with "
                               "--model-control-mode explicit to load and unload models")
        problem = name_problem(name)
        if problem:
            raise ControlError(f"{shown(name)} is not a model folder name: {problem}", grpc.StatusCode.INVALID_ARGUMENT)

    def _is_model_folder(self, name: str) -> bool:
        """Whether the repository has a folder ``name`` (a name name_problem() passed)."""
        try:
            return (self.repository / name).is_dir()
        except OSError as exc:  # is_dir() says False only for ENOENT and the like
            code = grpc.StatusCode.INVALID_ARGUMENT if exc.errno == errno.ENAMETOOLONG else \
                grpc.StatusCode.FAILED_PRECONDITION
            raise ControlError(f"model folder {shown(name)} cannot be read: {exc.strerror or exc}", code) from None

    async def close(self) -> None:
        """Stop every batcher (answering what is still queued) at shutdown."""
        for name in list(self._served):
            for version in list(self._served[name]):
                self._retire(name, version, reason="server stopped", wait_for_requests=False)
        await self.wait_retired()

    async def wait_retired(self) -> None:
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    # --- changes (under the lock) --------------------------------------------------------------

    async def _scan(self, name: str) -> ModelScan:
        """``name``'s folder and config.json, read on a worker thread."""
        return await asyncio.to_thread(scan_model, self.repository, name, self._config_limits)

    async def _sync(self, name: str, scan: ModelScan | None = None, *, strict: bool = False,
                    wait_until_stable: bool = False, reload_all: bool = False) -> list[tuple[str, str]]:
        """Make what is served of ``name`` match its folder and config.json (``scan``, or a fresh
        one); the (version, reason) of each load that failed."""
        if scan is None:
            scan = await self._scan(name)
        if scan.error is not None:
            if strict:
                raise scan.error
            reason = str(scan.error)
            self._index_model(name, UNAVAILABLE, reason, scan.versions)
            log.error("model config not usable; serving versions unchanged", extra={"model": name, "error": reason})
            self._note_problems(name, scan.problems)
            return [("", reason)]
        config, sources = scan.config, scan.versions
        wanted = {v: sources[v] for v in config.version_policy.select(list(sources))}
        changed = {}
        for version, (source, signature) in wanted.items():
            current = self._served.get(name, {}).get(version)
            if not reload_all:
                if current is not None and current.signature == signature and current.config == config:
                    continue  # serving this very file
                if self._failed.get((name, version)) == signature:
                    continue  # this very file failed to load: wait for another
                if wait_until_stable and self._seen.get((name, version)) != signature:
                    self._seen[name, version] = signature  # new, or still being written: next scan, if unchanged
                    continue
            changed[version] = (source, signature)
        failed = await self._load_versions(name, changed, config, strict=strict)
        # Versions gone from disk go now; versions the policy no longer wants only once every wanted
        # one serves (a new version still settling, or broken, must not leave the model with nothing).
        serving = self._served.get(name, {})
        replaced = all(version in serving for version in wanted)
        for version in list(serving):
            if version not in sources:
                self._retire(name, version, reason="removed from the repository")
            elif version not in wanted and replaced:
                self._retire(name, version, reason="superseded: not in the version policy any more")
        for key in [k for k in self._index if k[0] == name and k[1] not in wanted and k[1] not in serving]:
            del self._index[key]
        self._note_problems(name, scan.problems)
        return failed

    def _note_problems(self, name: str, problems: dict[str, str]) -> None:
        """Index each entry of ``name``'s folder that serves nothing, with why; log each once, when it appears."""
        logged = self._problems.get(name, {})
        for version, reason in problems.items():
            if version not in self._served.get(name, {}):
                self._index[name, version] = (UNAVAILABLE, reason)
            if logged.get(version) != reason:
                log.error("repository entry not served", extra={"model": name, "version": version, "error": reason})
        if problems:
            self._problems[name] = dict(problems)
        else:
            self._problems.pop(name, None)

    async def _load_versions(self, name: str | None, sources: dict[str, tuple[ModelSource, Signature | None]],
                             config: ModelConfig, *, strict: bool) -> list[tuple[str, str]]:
        """Load each version (its file, and the file's signature when scanned) beside what serves, then
        swap it in; failures leave the old one serving and are returned as (version, reason)."""
        settings = replace(self.settings, **config.overrides())
        failed = []
        for version, (source, signature) in sources.items():
            key = (name or source.path.stem, version)
            self._index[key] = (LOADING, "")
            started = time.perf_counter()
            try:
                model = await asyncio.to_thread(load_model, source.path, settings, name=source.name,
                                                version=source.version, check=self._check_receive_limit)
                if config.labels is not None:
                    _relabel(model, config.labels, source.path.parent.parent / "config.json")
                batcher = self._make_batcher(model, settings)
            except Exception as exc:  # noqa: BLE001 - whatever a bad file does, the serving version stays
                self._index.pop(key, None)
                if strict and isinstance(exc, MetadataError):  # its message does not name the file
                    raise MetadataError(f"{source.path}: {exc}") from None
                if strict:
                    raise
                reason = _failure_reason(exc)
                self._failed[key] = signature
                serving = version in self._served.get(key[0], {})
                self._index[key] = (READY, f"{reason}; the previous file keeps serving") if serving \
                    else (UNAVAILABLE, reason)
                self._metrics.count_load(key[0], "failed")
                log.error("model load failed", extra={"model": key[0], "version": version, "error": reason})
                failed.append((version, reason))
                continue
            if (model.name, model.version) != key:  # a single file names itself
                self._index.pop(key, None)
            self._failed.pop((model.name, model.version), None)
            self._swap(Served(model, batcher, signature, config))
            self._metrics.count_load(model.name, "ok")
            log.info("model version serving", extra={"model": model.name, "version": model.version,
                                                     "load_ms": round((time.perf_counter() - started) * 1e3, 1)})
            if self._deferred is not None:
                self._deferred.append((model, settings))  # at start: after every model is loaded and timed
            else:
                model.open_instance_sessions_in_background(settings)
        return failed

    def _check_receive_limit(self, model: Model) -> None:
        """Refuse ``model`` if its largest request would not fit the receive limit derived at start
        (on a worker thread, before the model's first run)."""
        images = self.settings.max_request_images_resolved
        needed = largest_request_bytes(model, images)
        if self.receive_limit is not None and needed > self.receive_limit:
            raise LoadRefused(
                f"its largest request ({images} images of {'x'.join(map(str, model.image_shape))}, {needed:,} bytes) "
                f"would not fit the receive limit the server derived at start ({self.receive_limit:,} bytes); "
                f"restart the server with --max-message-bytes {needed} or more"
            )

    def _swap(self, served: Served) -> None:
        name, version = served.model.name, served.model.version
        versions = dict(self._served.get(name, {}))
        old = versions.get(version)
        versions[version] = served
        self._publish(name, versions)
        self._index[name, version] = (READY, "")
        if old is not None:
            self._start_retiring(old)

    def _retire(self, name: str, version: str, reason: str, wait_for_requests: bool = True,
                keep_in_index: bool = False) -> None:
        versions = dict(self._served.get(name, {}))
        old = versions.pop(version, None)
        self._publish(name, versions)
        if keep_in_index:
            self._index[name, version] = (UNAVAILABLE, reason)
        else:
            self._index.pop((name, version), None)
        self._seen.pop((name, version), None)
        if old is not None:
            self._metrics.count_unload(name)
            log.info("model version unloaded", extra={"model": name, "version": version, "reason": reason})
            self._start_retiring(old, wait_for_requests)

    def _publish(self, name: str, versions: dict[str, Served]) -> None:
        """One assignment per dict: a request sees the old set or the new one, never half of either."""
        was_serving = name in self._served
        if versions:
            self._served[name] = versions
            self._latest[name] = versions[max(versions, key=version_key)]
        else:
            self._served.pop(name, None)
            self._latest.pop(name, None)
        if was_serving != bool(versions):
            self.on_serving_changed(name, bool(versions))
        self._metrics.models_loaded.set(sum(len(v) for v in self._served.values()))

    def _index_model(self, name: str, state: str, reason: str, versions: Iterable[str] = ()) -> None:
        """Every index row of ``name``, and one for each of ``versions`` on disk, says ``reason``; a model
        with none gets one (version empty)."""
        keys = {k for k in self._index if k[0] == name} | {(name, v) for v in versions}
        for key in keys or {(name, "")}:
            serving = key[1] in self._served.get(name, {})
            self._index[key] = (READY if serving else state, reason)

    def _start_retiring(self, old: Served, wait_for_requests: bool = True) -> None:
        task = asyncio.ensure_future(_retire(old, wait_for_requests))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)


async def _retire(old: Served, wait_for_requests: bool) -> None:
    """Let the requests holding ``old`` finish, then stop its compute threads; its sessions go with it."""
    deadline = time.monotonic() + RETIRE_TIMEOUT_S
    while wait_for_requests and old.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    await old.batcher.stop()


def _signature(source: ModelSource) -> Signature | None:
    try:
        return source.signature()
    except OSError:
        return None


def _failure_reason(exc: Exception) -> str:
    """Why a version did not load, for the index: a refusal's own sentence, else what went wrong."""
    if isinstance(exc, (RepositoryError, LoadRefused)):
        return f"load refused: {shown(str(exc), 500, quote=False)}"
    return f"load failed: {type(exc).__name__}: {shown(str(exc), 300, quote=False)}"


def _relabel(model: Model, labels: tuple[str, ...], config_path: Path) -> None:
    if len(labels) != model.metadata.num_classes:
        raise RepositoryError(f"{config_path}: {len(labels)} labels for a model of {model.metadata.num_classes} classes")
    model.metadata = replace(model.metadata, labels=list(labels))

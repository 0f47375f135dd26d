"""What a model repository holds on disk: NAME/VERSION/model.onnx (+ optional NAME/config.json).

Pure functions of the files, no loading: the folder name is the model name (Triton's rule), the
version folders are its versions, and ``config.json`` chooses which versions to serve and per-model
settings. ``serve/lifecycle.py`` loads and swaps what these describe.

Publishing a version safely: write it elsewhere on the same filesystem (or in a folder whose name
starts with a dot, which is never read) and rename it into place; a version folder whose file is
still changing is skipped until it stands still (poll mode checks this across two scans).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.json"


# What changes when a file is replaced or rewritten: inode, size, modification time.
Signature = tuple[int, int, int]


class RepositoryError(ValueError):
    """A repository folder or config.json that cannot be used; the message names the file."""


@dataclass(frozen=True)
class ModelSource:
    path: Path
    name: str | None = None  # None: the name recorded in the file
    version: str | None = None

    def signature(self) -> Signature:
        """What changes when the file is replaced or rewritten: inode, size, modification time."""
        return _signature_of(self.path.stat())


def version_key(version: str) -> tuple[int, int, str]:
    """Numeric versions order as numbers (2 < 10) and above any non-numeric one."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


@dataclass(frozen=True)
class VersionPolicy:
    """Triton's version_policy: the latest N versions (default 1), all of them, or specific ones."""

    kind: str = "latest"  # latest | all | specific
    latest: int = 1
    specific: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, value: Any, where: str) -> "VersionPolicy":
        """``{"latest": {"num_versions": 2}}``, ``{"all": {}}`` or ``{"specific": {"versions": [1, 3]}}``."""
        if not isinstance(value, dict) or len(value) != 1:
            raise RepositoryError(f"{where}: version_policy is one of {{\"latest\": {{\"num_versions\": N}}}}, "
                                  "{\"all\": {}} or {\"specific\": {\"versions\": [...]}}")
        (kind, body), = value.items()
        body = body or {}
        if kind == "all":
            return cls("all")
        if kind == "latest":
            count = body.get("num_versions", 1)
            if not isinstance(count, int) or count < 1:
                raise RepositoryError(f"{where}: version_policy.latest.num_versions must be an integer >= 1")
            return cls("latest", latest=count)
        if kind == "specific":
            versions = body.get("versions")
            if not isinstance(versions, list) or not versions:
                raise RepositoryError(f"{where}: version_policy.specific.versions must be a non-empty list")
            return cls("specific", specific=tuple(str(v) for v in versions))
        raise RepositoryError(f"{where}: unknown version_policy {kind!r}; use latest, all or specific")

    def select(self, versions: list[str]) -> list[str]:
        """The versions to serve out of those on disk, lowest first."""
        ordered = sorted(versions, key=version_key)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.specific]
        return ordered[-self.latest:]


@dataclass(frozen=True)
class ModelConfig:
    """NAME/config.json; unset fields take the `edgecnn serve` flags."""

    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    max_batch_size: int | None = None
    instances: int | None = None
    max_queue_delay_us: int | None = None
    labels: tuple[str, ...] | None = None

    FIELDS = ("version_policy", "max_batch_size", "instances", "max_queue_delay_us", "labels")

    @classmethod
    def read(cls, folder: Path) -> "ModelConfig":
        path = folder / CONFIG_FILE
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RepositoryError(f"{path}: not readable JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise RepositoryError(f"{path}: must hold a JSON object")
        unknown = sorted(set(raw) - set(cls.FIELDS))
        if unknown:
            raise RepositoryError(f"{path}: unknown keys {', '.join(unknown)}; known: {', '.join(cls.FIELDS)}")
        values: dict[str, Any] = {}
        if "version_policy" in raw:
            values["version_policy"] = VersionPolicy.from_json(raw["version_policy"], str(path))
        for key, lowest in (("max_batch_size", 1), ("instances", 0), ("max_queue_delay_us", 0)):
            if key in raw:
                if not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < lowest:
                    raise RepositoryError(f"{path}: {key} must be an integer >= {lowest}")
                values[key] = raw[key]
        if "labels" in raw:
            labels = raw["labels"]
            if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
                raise RepositoryError(f"{path}: labels must be a non-empty list of strings")
            values["labels"] = tuple(labels)
        return cls(**values)

    def overrides(self) -> dict[str, int]:
        """The ServeSettings fields this config sets."""
        names = ("max_batch_size", "instances", "max_queue_delay_us")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass(frozen=True)
class ModelScan:
    """One look at a model folder: each VERSION/model.onnx with its signature, and its config.json
    (``error`` instead when that cannot be used)."""

    versions: dict[str, tuple[ModelSource, Signature]]
    config: ModelConfig = field(default_factory=ModelConfig)
    error: RepositoryError | None = None


def scan_model(root: Path, name: str) -> ModelScan:
    """Model ``name``'s versions and config.json, reading its folder once and stat-ing each file once
    (blocking: the server runs it on a worker thread)."""
    folder = Path(root) / name
    versions = {file.parent.name: (ModelSource(file, name=name, version=file.parent.name), _signature_of(st))
                for file, st in _version_files(folder)}
    try:
        return ModelScan(versions, ModelConfig.read(folder))
    except RepositoryError as exc:
        return ModelScan(versions, error=exc)


def model_folders(root: Path) -> list[str]:
    """Every folder of ``root`` that may be a model (hidden folders never are), without reading them."""
    with os.scandir(root) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir() and not entry.name.startswith("."))


def model_names(root: Path) -> list[str]:
    """Folders of ``root`` that hold at least one VERSION/model.onnx (hidden folders never count)."""
    return [name for name in model_folders(root) if any(_version_files(Path(root) / name))]


def version_sources(root: Path, name: str) -> dict[str, ModelSource]:
    """Every VERSION/model.onnx of model ``name`` (hidden version folders are being written: skipped)."""
    return {file.parent.name: ModelSource(file, name=name, version=file.parent.name)
            for file, _ in _version_files(Path(root) / name)}


def _version_files(folder: Path):
    """(VERSION/model.onnx, its stat) for each version folder of ``folder``, by name; one stat per file."""
    try:
        with os.scandir(folder) as entries:
            versions = sorted(entry.name for entry in entries if entry.is_dir() and not entry.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return
    for version in versions:
        file = folder / version / MODEL_FILE
        st = _stat_if_present(file)
        if st is not None and stat.S_ISREG(st.st_mode):
            yield file, st


def _stat_if_present(path: Path) -> os.stat_result | None:
    """``path.stat()``, or None where Path.is_file() would say False rather than raise."""
    try:
        return path.stat()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return None
        raise
    except ValueError:
        return None


def _signature_of(st: os.stat_result) -> Signature:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def find_models(path: Path) -> list[ModelSource]:
    """The model files under ``path``: the file itself, or every NAME/VERSION/model.onnx of a repository."""
    path = Path(path)
    if path.is_file():
        return [ModelSource(path)]
    if not path.is_dir():
        raise FileNotFoundError(f"no model file or repository at {path}")
    sources = [source for name in model_names(path) for source in version_sources(path, name).values()]
    if not sources:
        raise FileNotFoundError(f"{path} is a directory but holds no NAME/VERSION/{MODEL_FILE}")
    return sources

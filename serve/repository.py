"""What a model repository holds on disk: NAME/VERSION/model.onnx (+ optional NAME/config.json).

Pure functions of the files, no loading: the folder name is the model name (Triton's rule), the
version folders are its versions (positive integers, as Triton's), and ``config.json`` chooses which
versions to serve and per-model settings. An entry that serves nothing (a version folder without
model.onnx or not named as a version, a model file outside a version folder, a model folder without a
version) is reported with why, in one sentence naming it. ``serve/lifecycle.py`` loads and swaps what
these describe, and logs and indexes those reports.

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
from typing import TYPE_CHECKING, Any

from edgecnn.serve.errors import shown

if TYPE_CHECKING:
    from edgecnn.serve.settings import ServeSettings

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.json"

# config.json is read from a folder anyone who can publish a model writes to: bounded before it is parsed.
CONFIG_MAX_BYTES = 64 * 1024
CONFIG_MAX_DEPTH = 8  # the deepest key, version_policy.specific.versions[i], is 4 deep
# The largest value config.json may give each per-model setting (a server flag set higher raises its
# own). instances: each is a compute thread, and on CPU an onnxruntime session of its own (a copy of
# the weights and an intra-op pool); runs past the cores only queue for them (the process's run slots),
# so 64 covers the largest machine while a hostile value cannot start thousands of threads.
# max_batch_size: each compute thread holds a buffer of that many images. max_queue_delay_us: 10 s.
MAX_INSTANCES = 64
MAX_BATCH_SIZE = 4096
MAX_QUEUE_DELAY_US = 10_000_000
MAX_QUEUE_SIZE = 65_536
# version_policy: at most this many versions (num_versions, or the specific list), each an int64 as
# Triton's (a positive integer, or its digits as a string).
MAX_POLICY_VERSIONS = 1000
MAX_VERSION = 2**63 - 1
# A folder name's limit on Linux filesystems (NAME_MAX), in bytes of UTF-8.
MAX_NAME_BYTES = 255


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
    return (1, int(version), "") if _is_number(version) else (0, 0, version)


def _is_number(text: str) -> bool:
    """Only the digits 0-9 (str.isdigit alone also takes "²", which int() refuses)."""
    return text.isascii() and text.isdigit()


POLICY_SHAPES = '{"latest": {"num_versions": N}}, {"all": {}} or {"specific": {"versions": [...]}}'
POLICY_KEYS = {"latest": ("num_versions",), "all": (), "specific": ("versions",)}


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
            raise RepositoryError(f"{where}: version_policy is one of {POLICY_SHAPES}")
        (kind, body), = value.items()
        if kind not in POLICY_KEYS:
            raise RepositoryError(f"{where}: unknown version_policy {shown(kind)}; use latest, all or specific")
        body = {} if body is None else body
        if not isinstance(body, dict) or set(body) - set(POLICY_KEYS[kind]):
            keys = ", ".join(POLICY_KEYS[kind]) or "none"
            raise RepositoryError(f"{where}: version_policy.{kind} must be an object (keys: {keys}), got {shown(body)}")
        if kind == "all":
            return cls("all")
        if kind == "latest":
            count = body.get("num_versions", 1)
            return cls("latest", latest=_integer(count, where, "version_policy.latest.num_versions",
                                                 1, MAX_POLICY_VERSIONS))
        versions = body.get("versions")
        if not isinstance(versions, list) or not 1 <= len(versions) <= MAX_POLICY_VERSIONS:
            raise RepositoryError(f"{where}: version_policy.specific.versions must be a list of 1 to "
                                  f"{MAX_POLICY_VERSIONS} versions, got {shown(versions)}")
        return cls("specific", specific=tuple(_version(v, where) for v in versions))

    def select(self, versions: list[str]) -> list[str]:
        """The versions to serve out of those on disk, lowest first."""
        ordered = sorted(versions, key=version_key)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.specific]
        return ordered[-self.latest:]


# config.json's numbers: the lowest value each may take, and what that value means when it is special.
NUMBERS = {"max_batch_size": (1, ""), "instances": (0, " (0: automatic)"), "max_queue_delay_us": (0, ""),
           "max_queue_size": (1, "")}


@dataclass(frozen=True)
class ConfigLimits:
    """The largest value config.json may give each per-model setting: the MAX_ cap above, or the
    server's own flag where that is higher (an operator who set it chose it for every model)."""

    max_batch_size: int = MAX_BATCH_SIZE
    instances: int = MAX_INSTANCES
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US
    max_queue_size: int = MAX_QUEUE_SIZE

    @classmethod
    def of(cls, settings: ServeSettings) -> "ConfigLimits":
        """The limits for a server of ``settings``."""
        caps = cls()
        return cls(**{name: max(getattr(caps, name), getattr(settings, name)) for name in NUMBERS})


@dataclass(frozen=True)
class ModelConfig:
    """NAME/config.json; unset fields take the `edgecnn serve` flags."""

    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    max_batch_size: int | None = None
    instances: int | None = None
    max_queue_delay_us: int | None = None
    max_queue_size: int | None = None
    labels: tuple[str, ...] | None = None

    FIELDS = ("version_policy", *NUMBERS, "labels")

    @classmethod
    def read(cls, folder: Path, limits: ConfigLimits = ConfigLimits()) -> "ModelConfig":
        """``folder``'s config.json, every value checked against ``limits`` (the default config when
        there is none); RepositoryError naming the file, the key and the allowed range otherwise."""
        path = folder / CONFIG_FILE
        text = _read_config_text(path)
        if text is None:
            return cls()
        raw = _parse_json(text, path)
        if not isinstance(raw, dict):
            raise RepositoryError(f"{path}: must hold a JSON object")
        unknown = sorted(set(raw) - set(cls.FIELDS))
        if unknown:
            raise RepositoryError(f"{path}: unknown keys {shown(', '.join(unknown), quote=False)}; "
                                  f"known: {', '.join(cls.FIELDS)}")
        values: dict[str, Any] = {}
        if "version_policy" in raw:
            values["version_policy"] = VersionPolicy.from_json(raw["version_policy"], str(path))
        for key, (lowest, meaning) in NUMBERS.items():
            if key in raw:
                values[key] = _integer(raw[key], str(path), key, lowest, getattr(limits, key), meaning)
        if "labels" in raw:
            labels = raw["labels"]
            if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
                raise RepositoryError(f"{path}: labels must be a non-empty list of strings")
            values["labels"] = tuple(labels)
        return cls(**values)

    def overrides(self) -> dict[str, int]:
        """The ServeSettings fields this config sets."""
        return {name: getattr(self, name) for name in NUMBERS if getattr(self, name) is not None}


def _read_config_text(path: Path) -> str | None:
    """The text of ``path`` (None when there is no such file), read only if it is a regular file of at
    most CONFIG_MAX_BYTES of UTF-8; any failure is a RepositoryError naming the file."""
    try:
        # O_NONBLOCK: a FIFO planted as config.json must not block the load; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as exc:
        raise RepositoryError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise RepositoryError(f"{path}: is not a regular file")
            data = file.read(CONFIG_MAX_BYTES + 1)
    except OSError as exc:
        raise RepositoryError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > CONFIG_MAX_BYTES:
        raise RepositoryError(f"{path}: larger than {CONFIG_MAX_BYTES:,} bytes, the most a config.json may hold")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RepositoryError(f"{path}: not UTF-8 ({exc})") from None


def _parse_json(text: str, path: Path) -> Any:
    """The JSON value of ``text``, nesting at most CONFIG_MAX_DEPTH deep, every object's keys unique;
    whatever fails (the parser's own RecursionError included) is a RepositoryError naming the file."""
    depth = _nesting_depth(text)
    if depth > CONFIG_MAX_DEPTH:
        raise RepositoryError(f"{path}: nests {depth} deep; a config.json nests at most {CONFIG_MAX_DEPTH} deep")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        raise RepositoryError(f"{path}: key {exc} appears twice in one object") from None
    except Exception as exc:  # noqa: BLE001 - JSONDecodeError, too many digits, RecursionError: all the file's fault
        raise RepositoryError(f"{path}: not readable JSON ({shown(str(exc), 200, quote=False)})") from None


def _nesting_depth(text: str) -> int:
    """How deep ``text``'s arrays and objects nest, brackets inside strings aside (JSON or not)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(shown(key))
        seen[key] = value
    return seen


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _integer(value: Any, where: str, key: str, lowest: int, highest: int, meaning: str = "") -> int:
    """``value`` if it is an integer (booleans are not) from ``lowest`` to ``highest``."""
    if isinstance(value, int) and not isinstance(value, bool) and lowest <= value <= highest:
        return value
    raise RepositoryError(f"{where}: {key} must be an integer from {lowest:,} to {highest:,}{meaning}, "
                          f"got {shown(value)}")


def _version(value: Any, where: str) -> str:
    """A version of a specific version_policy as its folder is named: a positive int64, or its digits."""
    integer = isinstance(value, int) and not isinstance(value, bool)
    digits = str(value) if integer else value if isinstance(value, str) else ""
    if _is_number(digits) and len(digits) <= len(str(MAX_VERSION)) and 1 <= int(digits) <= MAX_VERSION:
        return digits
    raise RepositoryError(f"{where}: version_policy.specific.versions holds {shown(value)}; each version is an "
                          f"integer from 1 to {MAX_VERSION:,} (or its digits as a string)")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a model folder (None: it can), by the rules model_folders reads by."""
    if not name:
        return "it is empty"
    if name.startswith("."):
        return "it starts with a dot (hidden folders are never read)"
    if "/" in name or "\0" in name or (os.altsep and os.altsep in name):
        return "it holds a path separator or a NUL character"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes"
    return None


@dataclass(frozen=True)
class ModelScan:
    """One look at a model folder: each VERSION/model.onnx with its signature, its config.json
    (``error`` instead when that cannot be used), and why each other entry serves nothing
    (``problems``: version -> reason, "" for the folder itself)."""

    versions: dict[str, tuple[ModelSource, Signature]]
    config: ModelConfig = field(default_factory=ModelConfig)
    error: RepositoryError | None = None
    problems: dict[str, str] = field(default_factory=dict)


def scan_model(root: Path, name: str, limits: ConfigLimits = ConfigLimits()) -> ModelScan:
    """Model ``name``'s versions, config.json (its values within ``limits``) and layout mistakes, reading
    its folder once and stat-ing each file once (blocking: the server runs it on a worker thread)."""
    folder = Path(root) / name
    try:
        files, problems = read_model_folder(folder)
    except OSError as exc:  # unreadable (permissions), or a path too long for the filesystem
        return ModelScan({}, error=RepositoryError(f"{folder}: cannot be read ({exc.strerror or exc})"))
    versions = {version: (ModelSource(file, name=name, version=version), _signature_of(st))
                for version, file, st in files}
    try:
        return ModelScan(versions, ModelConfig.read(folder, limits), problems=problems)
    except RepositoryError as exc:
        return ModelScan(versions, error=exc, problems=problems)


def model_folders(root: Path) -> list[str]:
    """Every folder of ``root`` that may be a model (hidden folders never are), without reading them."""
    with os.scandir(root) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir() and not entry.name.startswith("."))


def model_names(root: Path) -> list[str]:
    """Folders of ``root`` that hold at least one VERSION/model.onnx (hidden folders never count)."""
    return [name for name in model_folders(root) if read_model_folder(Path(root) / name)[0]]


def version_sources(root: Path, name: str) -> dict[str, ModelSource]:
    """Every VERSION/model.onnx of model ``name`` (hidden version folders are being written: skipped)."""
    files, _ = read_model_folder(Path(root) / name)
    return {version: ModelSource(file, name=name, version=version) for version, file, _ in files}


def is_version(name: str) -> bool:
    """Whether a folder name is a version, as Triton's: a positive int64, in digits without a leading 0."""
    return _is_number(name) and name[0] != "0" and len(name) <= len(str(MAX_VERSION)) and int(name) <= MAX_VERSION


def read_model_folder(folder: Path) -> tuple[list[tuple[str, Path, os.stat_result]], dict[str, str]]:
    """(version, VERSION/model.onnx, its stat) of each version folder of ``folder`` that serves, by name,
    and why each other entry serves nothing (version -> one sentence; "" for the folder itself). Hidden
    entries are being written: never read, never a mistake. A folder that is not there holds nothing."""
    try:
        with os.scandir(folder) as scanned:
            entries = sorted((entry.name, entry.is_dir()) for entry in scanned)
    except (FileNotFoundError, NotADirectoryError):
        return [], {}
    visible = [(name, is_dir) for name, is_dir in entries if not name.startswith(".")]
    versions = [name for name, is_dir in visible if is_dir and is_version(name)]
    files, problems = [], {}
    for name in (name for name, is_dir in visible if is_dir and name != CONFIG_FILE):  # config.json: its own error
        if not is_version(name):
            problems[name] = (f"{folder / name}: {shown(name)} is not a version, version folders are positive "
                              f"integers as in Triton (rename it to {folder / _free_version(versions, name)})")
            continue
        file = folder / name / MODEL_FILE
        st = _stat_if_present(file)
        if st is not None and stat.S_ISREG(st.st_mode):
            files.append((name, file, st))
        else:
            problems[name] = _no_model_file(folder / name, st)
    loose = [name for name, is_dir in visible if not is_dir and name.endswith(".onnx")]
    if loose:
        problems[""] = (f"{folder}: {_listed(loose)} not in a version folder "
                        f"(move {_it(loose)} to {folder / _free_version(versions) / MODEL_FILE})")
    elif not files and not problems and len(visible) == len(entries):  # a hidden entry: a publish under way
        problems[""] = f"{folder}: holds no version folder (put the model at {folder / '1' / MODEL_FILE})"
    return files, problems


def _no_model_file(version_folder: Path, st: os.stat_result | None) -> str:
    """Why ``version_folder`` serves nothing: its model.onnx is no file, is named otherwise, or is missing."""
    if st is not None:
        return f"{version_folder / MODEL_FILE}: is not a regular file"
    with os.scandir(version_folder) as entries:
        others = sorted(e.name for e in entries if e.name.endswith(".onnx") and not e.name.startswith("."))
    if not others:
        return f"{version_folder}: holds no {MODEL_FILE}"
    return f"{version_folder}: holds {', '.join(others)} but no {MODEL_FILE} (rename {_it(others)} to {MODEL_FILE})"


def _listed(files: list[str]) -> str:
    return f"{files[0]} is" if len(files) == 1 else f"{', '.join(files)} are"


def _it(files: list[str]) -> str:
    return "it" if len(files) == 1 else "the one to serve"


def _free_version(versions: list[str], name: str = "") -> str:
    """The version a misnamed folder (or loose file) should take: the number in ``name`` when it is free,
    else the one after the highest of ``versions``."""
    digits = "".join(c for c in name if _is_number(c)).lstrip("0")
    if is_version(digits) and digits not in versions:
        return digits
    return str(max((int(v) for v in versions), default=0) + 1)


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


# The most mistakes one start-up error lists (the index and the log have every one).
MAX_LISTED_PROBLEMS = 5


def nothing_to_serve(root: Path, problems: dict[str, dict[str, str]]) -> str:
    """Why the repository folder ``root`` serves nothing, in one sentence: it is an export folder (or
    one model's folder), or the mistakes of its model folders (``problems``: name -> version -> reason)."""
    root = Path(root)
    onnx = sorted((p.name for p in root.iterdir() if p.name.endswith(".onnx") and p.is_file()), key=_serve_first)
    if onnx:
        what = "an export folder" if any((root / f).is_file() for f in ("report.json", "report.md")) else \
            "a folder of model files"
        others = f" (or {', '.join(onnx[1:])})" if onnx[1:] else ""
        return (f"{root} is {what}, not a repository: serve {root / onnx[0]}{others}, or make it a repository "
                f"entry: NAME/1/{MODEL_FILE}")
    if any(is_version(name) and (root / name / MODEL_FILE).is_file() for name in model_folders(root)):
        return (f"{root} is one model's folder (VERSION/{MODEL_FILE}), not a repository: serve the folder above "
                f"it, {root.resolve().parent}")
    reasons = [reason for name in sorted(problems) for _, reason in sorted(problems[name].items())]
    if not reasons:
        return f"{root} is a directory but holds no NAME/VERSION/{MODEL_FILE}"
    more = len(reasons) - MAX_LISTED_PROBLEMS
    listed = "; ".join(reasons[:MAX_LISTED_PROBLEMS]) + (f"; and {more} more (see the log)" if more > 0 else "")
    return f"{root} holds no model to serve (NAME/VERSION/{MODEL_FILE}): {listed}"


def _serve_first(file_name: str) -> tuple[int, str]:
    """An export folder's files in the order to suggest them: int8, fp32, the rest."""
    order = ("model.int8.onnx", MODEL_FILE)
    return (order.index(file_name) if file_name in order else len(order), file_name)


def find_models(path: Path) -> list[ModelSource]:
    """The model files under ``path``: the file itself, or every NAME/VERSION/model.onnx of a repository."""
    path = Path(path)
    if path.is_file():
        return [ModelSource(path)]
    if not path.is_dir():
        raise FileNotFoundError(f"no model file or repository at {path}")
    sources = [source for name in model_names(path) for source in version_sources(path, name).values()]
    if not sources:
        problems = {name: read_model_folder(path / name)[1] for name in model_folders(path)}
        raise FileNotFoundError(nothing_to_serve(path, problems))
    return sources

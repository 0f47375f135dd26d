"""Run directories on disk: weights in safetensors, everything else in JSON. Nothing is ever unpickled.

A run directory holds
- ``run.json``: what was trained on what, how, and how well (``FORMAT``);
- ``model.safetensors``: the best weights (by validation accuracy; the last epoch without a validation split);
- ``resume.safetensors``: the last epoch's weights, optimizer moments and random-generator states, with the
  loop's counters as JSON in the file's metadata: one file, so it is always self-consistent;
- ``curves.png``, ``confusion.png``, ``samples.png``.
Every file is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from edgecnn.train.files import atomic_path, atomic_write_text
from edgecnn.train.models import ModelConfigError, create_model

FORMAT = "edgecnn-run/1"
RUN_JSON = "run.json"
BEST_WEIGHTS = "model.safetensors"
RESUME_STATE = "resume.safetensors"
REQUIRED_KEYS = ("architecture", "model_options", "labels", "input", "normalisation")


class RunDirError(Exception):
    """A run directory that is missing, incomplete or corrupt; the message names the file."""


@dataclass
class LoadedRun:
    model: nn.Module  # in eval mode, with the best weights
    info: dict[str, Any]  # the parsed run.json
    run_dir: Path


# --- tensors in and out -------------------------------------------------------------------


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    plain = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    with atomic_path(path) as temp:
        save_file(plain, str(temp), metadata=metadata)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise RunDirError(f"{path} does not exist: this run has no saved weights yet")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise RunDirError(f"{path} is not a readable safetensors file ({exc}): it is truncated or corrupt") from None


def read_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise RunDirError(f"{path} is not a readable safetensors file ({exc}): it is truncated or corrupt") from None


def save_weights(path: Path, model: nn.Module) -> None:
    save_tensors(path, model.state_dict())


def load_weights(model: nn.Module, path: Path) -> None:
    try:
        model.load_state_dict(load_tensors(path))
    except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
        first_line = str(exc).strip().splitlines()[0]
        raise RunDirError(f"{path} does not fit the model in run.json ({first_line})") from None


# --- run.json -----------------------------------------------------------------------------


def write_run_info(run_dir: Path, info: dict[str, Any]) -> None:
    atomic_write_text(run_dir / RUN_JSON, json.dumps(info, indent=2) + "\n")


def read_run_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_JSON
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a run directory ({'not a folder' if run_dir.exists() else 'no such folder'})")
    if not path.is_file():
        raise RunDirError(f"{path} does not exist: {run_dir} is not a run directory")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise RunDirError(f"{path} is not an edgecnn run record (expected \"format\": \"{FORMAT}\")")
    missing = [key for key in REQUIRED_KEYS if key not in info]
    if missing:
        raise RunDirError(f"{path} lacks {', '.join(missing)}")
    return info


def build_model(info: dict[str, Any], source: Path) -> nn.Module:
    """The untrained model that run.json describes."""
    try:
        return create_model(
            info["architecture"],
            in_channels=int(info["input"]["channels"]),
            num_classes=len(info["labels"]),
            image_size=(int(info["input"]["height"]), int(info["input"]["width"])),
            **info["model_options"],
        )
    except ModelConfigError as exc:
        raise RunDirError(f"{source} describes a model that cannot be built: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise RunDirError(f"{source} has a malformed input or model description ({exc!r})") from None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """The trained model (best weights, eval mode) and run.json of ``run_dir``."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    model = build_model(info, run_dir / RUN_JSON)
    load_weights(model, run_dir / BEST_WEIGHTS)
    return LoadedRun(model=model.to(device).eval(), info=info, run_dir=run_dir)


# --- resume state -------------------------------------------------------------------------


def save_resume_state(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Tensor],
    counters: dict[str, Any],
) -> None:
    """Everything needed to continue after the last epoch, in one atomic file."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for index, values in optimizer_state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    tensors.update({f"rng.{name}": state for name, state in generators.items()})
    metadata = {
        "counters": json.dumps(counters),
        "optimizer_scalars": json.dumps(scalars),
        "optimizer_groups": json.dumps(optimizer_state["param_groups"]),
    }
    save_tensors(run_dir / RESUME_STATE, tensors, metadata)


def load_resume_state(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore ``model`` and ``optimizer`` in place; return (generator states, counters)."""
    path = run_dir / RESUME_STATE
    tensors = load_tensors(path)
    try:
        metadata = read_metadata(path)
        counters = json.loads(metadata["counters"])
        scalars = json.loads(metadata["optimizer_scalars"])
        groups = json.loads(metadata["optimizer_groups"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path} lacks its resume counters ({exc!r}): it is corrupt") from None

    state: dict[int, dict[str, Any]] = {}
    for key, value in [*_under(tensors, "optimizer.").items(), *scalars.items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    weights = _under(tensors, "model.")
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (RuntimeError, ValueError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise RunDirError(f"{path} does not fit the model and optimizer in run.json ({first_line})") from None
    return _under(tensors, "rng."), counters


def _under(tensors: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries whose names start with ``prefix``, without it."""
    return {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}

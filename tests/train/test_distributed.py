"""Training on two processes (DDP over gloo, started by torchrun's launcher) against one process.

Each launch spawns two Python processes that import torch, so the launches are few: one two-process
epoch shared by the tests below, its resume, one end-to-end `edgecnn train --nproc 2` and one dying rank.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from edgecnn.train import distributed
from edgecnn.train.checkpoint import RESUME_STATE
from edgecnn.train.cli import register
from edgecnn.train.settings import SettingsError, TrainSettings
from edgecnn.train.trainer import resume, train
from rich.console import Console
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.helpers.datasets import write_idx_pair

RUN_FILES = {"run.json", "model.safetensors", RESUME_STATE, "curves.png", "confusion.png", "samples.png"}


@pytest.fixture(scope="module")
def even_mnist_dir(tmp_path_factory: pytest.TempPathFactory, real_mnist: tuple[np.ndarray, np.ndarray]) -> Path:
    """512 training digits: batches of 32 split evenly, so one and two processes take exactly the same steps."""
    images, labels = real_mnist
    directory = tmp_path_factory.mktemp("even") / "mnist"
    write_idx_pair(directory, "train", images[:512], labels[:512], gz=False)
    write_idx_pair(directory, "t10k", images[8000:8200], labels[8000:8200], gz=False)
    return directory


def plain_settings(data_dir: Path, run_dir: Path, epochs: int) -> TrainSettings:
    """No dropout, no BatchNorm, plain SGD at a constant rate, no validation split: a run of 2 epochs is
    a run of 1 resumed, and two processes with 16 images each are one process with 32."""
    return TrainSettings(dataset="mnist", data_dir=str(data_dir), download=False, model="mnist-cnn", epochs=epochs,
                         batch_size=32, optimizer="sgd", learning_rate=0.02, lr_schedule="constant", val_split=0.0,
                         seed=3, run_dir=str(run_dir), threads=1)


def quiet() -> Console:
    return Console(file=io.StringIO())


def model_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(run_dir / RESUME_STATE)).items() if k.startswith("model.")}


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = model_tensors(a), model_tensors(b)
    assert left.keys() == right.keys()
    for name in left:
        torch.testing.assert_close(left[name], right[name], rtol=0, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def two_process_run(even_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch on two processes (16 steps of 16 images each per process)."""
    return train(plain_settings(even_mnist_dir, tmp_path_factory.mktemp("ddp") / "run", epochs=1),
                 progress=False, nproc=2)


def test_two_processes_take_the_steps_of_one_with_the_same_global_batch(
    two_process_run: Path, even_mnist_dir: Path, tmp_path: Path
) -> None:
    one = train(plain_settings(even_mnist_dir, tmp_path / "one", epochs=1), progress=False, console=quiet())
    assert_same_weights(two_process_run, one)
    two_info, one_info = (json.loads((d / "run.json").read_text()) for d in (two_process_run, one))
    assert two_info["epochs"][0]["train_loss"] == pytest.approx(one_info["epochs"][0]["train_loss"], abs=1e-5)
    assert two_info["epochs"][0]["train_accuracy"] == pytest.approx(one_info["epochs"][0]["train_accuracy"])
    assert two_info["test_accuracy"] == pytest.approx(one_info["test_accuracy"])


def test_rank_zero_writes_the_run_directory_once(two_process_run: Path) -> None:
    assert {p.name for p in two_process_run.iterdir()} == RUN_FILES  # no second copy, no temporary files
    info = json.loads((two_process_run / "run.json").read_text())
    assert info["world_size"] == 2 and info["distributed_backend"] == "gloo"
    assert info["hyperparameters"]["batch_size"] == 32  # the global batch
    assert [e["epoch"] for e in info["epochs"]] == [1] and info["status"] == "complete"
    rng = {k for k in load_file(str(two_process_run / RESUME_STATE)) if k.startswith("rng.")}
    assert rng == {"rng.shuffle", "rng.torch", "rng.shuffle.1", "rng.torch.1"}  # both processes' draws


def test_resume_on_two_processes_continues_the_run(
    two_process_run: Path, even_mnist_dir: Path, tmp_path: Path
) -> None:
    copy = Path(shutil.copytree(two_process_run, tmp_path / "resumed"))
    resumed = resume(copy, epochs=2, progress=False, nproc=2)
    straight = train(plain_settings(even_mnist_dir, tmp_path / "straight", epochs=2), progress=False,
                     console=quiet())
    assert_same_weights(resumed, straight)
    info = json.loads((resumed / "run.json").read_text())
    assert [e["epoch"] for e in info["epochs"]] == [1, 2] and info["world_size"] == 2


# --- the command and its errors ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    register(app)
    return app


def edgecnn_command() -> str:
    """The installed `edgecnn` script: beside this Python (a virtual environment's bin/), else on PATH.

    Never a skip: installing the package installs the script, so a missing one is a broken install."""
    beside = Path(sys.executable).with_name("edgecnn")
    found = str(beside) if beside.is_file() else shutil.which("edgecnn")
    assert found, f"no edgecnn command beside {sys.executable} or on PATH: install the package (pip install -e .)"
    return found


def test_train_command_with_nproc_2_on_the_embedded_set(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = subprocess.run(
        [edgecnn_command(), "train", "--nproc", "2", "--model", "mnist-cnn", "--epochs", "1", "--batch-size", "128",
         "--val-split", "0.1", "--run-dir", str(run), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    log = result.stderr
    assert "2 processes (gloo, cpu, 64 images per process of each batch of 128" in log
    assert log.count("epoch 1:") == 1 and log.count("test accuracy") == 1  # rank 0 speaks, once
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2 and info["dataset"]["split"]["train_images"] > 7000
    assert info["test_accuracy"] > 0.8 and "val_accuracy" in info["epochs"][0]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--nproc", "0"], "--nproc must be at least 1"),
        (["--nproc", "2", "--batch-size", "33"], "--batch-size 33 is the global batch and must divide evenly among 2"),
    ],
    ids=["no-processes", "batch-not-divisible"],
)
def test_nproc_errors_are_one_clear_line_before_any_process_starts(
    cli: typer.Typer, tmp_path: Path, arguments: list[str], message: str
) -> None:
    result = CliRunner().invoke(cli, ["train", *arguments, "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("error:") and message in result.output
    assert not (tmp_path / "run").exists()


def test_a_bad_input_in_the_workers_is_the_one_process_message(even_mnist_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "something").write_text("x")
    with pytest.raises(SettingsError, match=r"taken already exists and is not empty"):
        train(plain_settings(even_mnist_dir, tmp_path / "taken", epochs=1), progress=False, nproc=2)


def rank_one_dies() -> None:
    """A launched worker (spawned, so importable by name: tests/train is a package): rank 1 is killed as by the OOM killer; rank 0 waits."""
    import os
    import signal
    import time

    if os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # stopped by the launcher long before this


def test_a_dying_process_ends_the_run_with_a_clear_message() -> None:
    message = r"^process 1 of 2 was killed by SIGKILL; the other processes were stopped$"
    with pytest.raises(distributed.LaunchError, match=message):
        distributed.launch(2, rank_one_dies)


def test_batch_norm_across_processes_is_said_in_one_line() -> None:
    from edgecnn.train.distributed import Group
    from edgecnn.train.models import create_model
    from edgecnn.train.trainer import _batch_norm_note

    settings = TrainSettings(batch_size=64)
    resnet = create_model("resnet-small", in_channels=1, num_classes=10, image_size=(28, 28), width=4)
    plain = create_model("mnist-cnn", in_channels=1, num_classes=10, image_size=(28, 28))
    gloo, nccl = Group(world_size=2, backend="gloo"), Group(world_size=2, backend="nccl")
    assert "each of the 2 processes normalises with the statistics of its own 32 images" in _batch_norm_note(
        resnet, gloo, settings)
    assert "SyncBatchNorm across the 2 processes" in _batch_norm_note(resnet, nccl, settings)
    assert _batch_norm_note(plain, gloo, settings) is None and _batch_norm_note(resnet, Group(), settings) is None

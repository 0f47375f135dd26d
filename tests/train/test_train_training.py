"""Short real training runs: the run directory, checkpoint round trip, resume, reproducibility, the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import typer
from edgecnn.train.checkpoint import RESUME_STATE, RunDirError, load_run
from edgecnn.train.cli import register
from edgecnn.train.data import DatasetError, DatasetSpec, load_splits
from edgecnn.train.evaluate import evaluate_run
from edgecnn.train.settings import TrainSettings
from edgecnn.train.trainer import resume, train
from rich.console import Console
from safetensors.torch import load_file
from typer.testing import CliRunner

RUN_FILES = {"run.json", "model.safetensors", RESUME_STATE, "curves.png", "confusion.png", "samples.png"}


def quiet() -> Console:
    return Console(file=io.StringIO())


def small_settings(data_dir: Path, run_dir: Path, **changes: object) -> TrainSettings:
    values = dict(dataset="mnist", data_dir=str(data_dir), download=False, model="mnist-cnn", epochs=2,
                  batch_size=32, val_split=0.2, run_dir=str(run_dir), seed=7)
    return TrainSettings(**{**values, **changes})


@pytest.fixture(scope="module")
def run_dir(small_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One two-epoch run on 480 real digits (120 more held out for validation), shared by the tests below."""
    return train(small_settings(small_mnist_dir, tmp_path_factory.mktemp("runs") / "run"), progress=False,
                 console=quiet())


def test_run_directory_holds_everything_a_user_needs(run_dir: Path) -> None:
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES
    info = json.loads((run_dir / "run.json").read_text())
    assert info["format"] == "edgecnn-run/1" and info["architecture"] == "mnist-cnn"
    assert info["labels"] == [str(d) for d in range(10)]
    assert info["input"] == {"height": 28, "width": 28, "channels": 1, "layout": "NCHW", "dtype": "float32"}
    assert info["normalisation"]["scale"] == 1 / 255 and len(info["normalisation"]["mean"]) == 1
    split = info["dataset"]["split"]
    assert split["train_images"] + split["validation_images"] == 600 and split["test_images"] == 200
    assert [e["epoch"] for e in info["epochs"]] == [1, 2]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"} <= set(info["epochs"][0])
    assert info["test_accuracy"] > 0.5  # real digits: far above the 0.1 of guessing
    assert info["hyperparameters"]["batch_size"] == 32 and info["seed"] == 7 and info["wall_time_s"] > 0


def test_checkpoint_round_trip_reproduces_the_test_accuracy(run_dir: Path) -> None:
    loaded = load_run(run_dir)
    assert not loaded.model.training
    result = evaluate_run(run_dir)
    assert result["accuracy"] == pytest.approx(loaded.info["test_accuracy"])
    assert result["count"] == 200 and sum(map(sum, result["confusion_matrix"])) == 200
    assert set(result["per_class_accuracy"]) == set(loaded.info["labels"])


def test_best_weights_are_the_best_validation_epoch(run_dir: Path) -> None:
    info = load_run(run_dir).info
    best = max(info["epochs"], key=lambda e: e["val_accuracy"])
    assert info["best_epoch"] == best["epoch"]


def test_same_seed_same_weights_and_resume_continues_exactly(
    small_mnist_dir: Path, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgecnn.train import trainer

    save_and_checkpoint = trainer._checkpoint

    def interrupted_after_the_first_epoch(*args: object) -> None:
        save_and_checkpoint(*args)
        raise KeyboardInterrupt  # as a user's Ctrl-C right after epoch 1 is saved

    monkeypatch.setattr(trainer, "_checkpoint", interrupted_after_the_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(small_settings(small_mnist_dir, tmp_path / "resumed"), progress=False, console=quiet())
    monkeypatch.undo()
    resumed_dir = resume(tmp_path / "resumed", progress=False, console=quiet())

    straight = load_file(str(run_dir / RESUME_STATE))
    resumed = load_file(str(resumed_dir / RESUME_STATE))
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)
    info = json.loads((resumed_dir / "run.json").read_text())
    assert [e["epoch"] for e in info["epochs"]] == [1, 2]
    assert info["test_accuracy"] == json.loads((run_dir / "run.json").read_text())["test_accuracy"]


def test_bad_data_leaves_no_run_directory(tmp_path: Path) -> None:
    output = tmp_path / "runs"
    settings = TrainSettings(data_dir=str(tmp_path / "empty"), download=False, output_dir=str(output))
    with pytest.raises(DatasetError):
        train(settings, progress=False, console=quiet())
    assert not output.exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]),
         r"model\.safetensors is not a readable safetensors file"),
        (lambda d: (d / "model.safetensors").unlink(), r"model\.safetensors does not exist"),
        (lambda d: (d / "run.json").write_text("{not json"), r"run\.json is not valid JSON"),
        (lambda d: (d / "run.json").write_text(
            (d / "run.json").read_text().replace('"architecture": "mnist-cnn"', '"architecture": "mystery"')),
         r"unknown model 'mystery'"),
    ],
    ids=["truncated-weights", "no-weights", "bad-json", "unknown-architecture"],
)
def test_damaged_run_directories_are_clear(run_dir: Path, tmp_path: Path, damage, message: str) -> None:
    import shutil

    copy = Path(shutil.copytree(run_dir, tmp_path / "copy"))
    damage(copy)
    with pytest.raises(RunDirError, match=message):
        load_run(copy)


# --- the commands ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    register(app)
    return app


def test_train_and_evaluate_commands(cli: typer.Typer, small_mnist_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "cli-run"
    result = runner.invoke(cli, ["train", "--data-dir", str(small_mnist_dir), "--model", "fashion-cnn", "--epochs",
                                 "1", "--padding", "same", "--pool", "avg", "--run-dir", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    info = json.loads((run / "run.json").read_text())
    assert info["model_options"] == {"padding": "same", "pool": "avg"}
    shown = runner.invoke(cli, ["evaluate", str(run), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["accuracy"] == pytest.approx(info["test_accuracy"])
    table = runner.invoke(cli, ["evaluate", str(run)])
    assert "per-class accuracy" in table.output and "confusion matrix" in table.output


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["train", "--data-dir", "{empty}", "--no-download"], "mnist is not in"),
        (["train", "--data-dir", "{empty}", "--mirror", "http://127.0.0.1:1"], "could not be downloaded"),
        (["train", "--model", "nope"], "unknown model 'nope'"),
        (["train", "--val-split", "1.5"], "--val-split must be in"),
        (["evaluate", "{empty}"], "not a run directory (no run.json in it)"),
    ],
    ids=["no-files", "offline", "unknown-model", "bad-val-split", "not-a-run"],
)
def test_command_errors_are_one_clear_line(
    cli: typer.Typer, tmp_path: Path, arguments: list[str], message: str
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, [a.replace("{empty}", str(empty)) for a in arguments] + ["--no-progress"] * (
        arguments[0] == "train"))
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    last_line = result.output.strip().splitlines()[-1]
    assert last_line.startswith("error:") and message in last_line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(cli: typer.Typer) -> None:
    result = CliRunner().invoke(cli, ["train", "--device", "cuda", "--no-progress"])
    assert result.exit_code == 1 and "no usable CUDA device" in result.output


def test_early_stopping_needs_a_validation_split() -> None:
    from edgecnn.train.settings import SettingsError

    with pytest.raises(SettingsError, match="needs a validation split"):
        train(TrainSettings(patience=2, val_split=0.0), progress=False, console=quiet())


def test_resume_refuses_changed_settings(cli: typer.Typer, run_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "--resume", str(run_dir), "--lr", "0.1"])
    assert result.exit_code == 1 and "drop --lr" in result.output


def test_folder_dataset_trains_our_model_on_rgb_images(tmp_path: Path) -> None:
    from tests.helpers.datasets import write_image_folder

    write_image_folder(tmp_path / "images", {"red": 12, "green": 12, "blue": 12}, size=(16, 16))
    settings = TrainSettings(dataset="folder", data_dir=str(tmp_path / "images"), model="resnet-small",
                             model_options={"width": 8}, epochs=1, batch_size=8, val_split=0.0,
                             rotation=10, shift=0.1, hflip=True, run_dir=str(tmp_path / "run"))
    run = train(settings, progress=False, console=quiet())
    info = load_run(run).info
    assert info["labels"] == ["blue", "green", "red"]
    assert info["input"]["channels"] == 3 and info["input"]["height"] == 16
    assert len(info["normalisation"]["mean"]) == 3
    assert info["hyperparameters"]["learning_rate"] == 2e-3  # resnet-small's own default
    assert info["hyperparameters"]["augmentation"] == {"rotation": 10, "shift": 0.1, "hflip": True, "enabled": True}
    _, test = load_splits(DatasetSpec(name="folder", data_dir=str(tmp_path / "images")))
    assert evaluate_run(run)["count"] == len(test)

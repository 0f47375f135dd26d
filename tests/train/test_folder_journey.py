"""A newcomer's first `edgecnn train` on their own folder of images (issue 17): the folder is recognised,
nothing is ever written into it, and the first lines say what the model will be trained on."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import typer
from edgecnn.train.checkpoint import read_run_info
from edgecnn.train.cli import register
from edgecnn.train.data import DatasetSpec, load_splits
from PIL import Image
from typer.testing import CliRunner

QUICK = ["--model", "mnist-cnn", "--epochs", "1", "--batch-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    register(app)
    return app


@pytest.fixture
def dead_mirror() -> str:
    """A loopback URL nobody answers: a download the code should not try fails fast, never reaching the internet."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def write_shapes(directory: Path, classes: tuple[str, ...] = ("circle", "square", "triangle"), count: int = 10,
                 sizes: tuple[tuple[int, int], ...] = ((40, 48), (32, 32), (32, 32))) -> Path:
    """``directory/<class>/<i>.png``, image i of size ``sizes[i % len(sizes)]`` (height, width), RGB."""
    rng = np.random.default_rng(0)
    for name in classes:
        (directory / name).mkdir(parents=True)
        for i in range(count):
            height, width = sizes[i % len(sizes)]
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(directory / name / f"{i}.png")
    return directory


def snapshot(folder: Path) -> dict[str, int]:
    """Every path under ``folder`` (itself included) with its modification time: any write changes it."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in [folder, *folder.rglob("*")]}


def invoke(cli: typer.Typer, args: list[str]):
    return CliRunner().invoke(cli, ["train", *args])


def test_an_image_folder_without_dataset_trains_as_one_and_is_left_untouched(
    cli: typer.Typer, tmp_path: Path, dead_mirror: str
) -> None:
    shapes = write_shapes(tmp_path / "shapes")
    before = snapshot(shapes)
    result = invoke(cli, ["--data-dir", str(shapes), "--run-dir", str(tmp_path / "run"), "--mirror", dead_mirror,
                          *QUICK])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (f"--data-dir {shapes} holds one sub-folder of images per class: "
                                             "training on it as --dataset folder")
    info = read_run_info(tmp_path / "run")
    assert info["dataset"]["name"] == "folder" and info["labels"] == ["circle", "square", "triangle"]
    assert snapshot(shapes) == before


def test_a_public_dataset_asked_for_on_an_image_folder_is_refused_with_the_hint(
    cli: typer.Typer, tmp_path: Path, dead_mirror: str
) -> None:
    shapes = write_shapes(tmp_path / "shapes")
    before = snapshot(shapes)
    for dataset in ("mnist", "fashion-mnist", "cifar10"):
        result = invoke(cli, ["--dataset", dataset, "--data-dir", str(shapes), "--run-dir", str(tmp_path / "run"),
                              "--mirror", dead_mirror, *QUICK])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.output.strip().splitlines() == [
            f"error: {shapes} holds one sub-folder of images per class, not the {dataset} files: use --dataset "
            "folder (nothing was downloaded into it)"
        ]
    assert snapshot(shapes) == before and not (tmp_path / "run").exists()


def test_a_download_into_a_folder_of_other_files_says_where_first(
    cli: typer.Typer, tmp_path: Path, dead_mirror: str
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    result = invoke(cli, ["--dataset", "mnist", "--data-dir", str(other), "--mirror", dead_mirror, *QUICK])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == (f"mnist is not in {other}: downloading its 4 files into it, beside "
                                             "the 1 entry already there")
    assert [p.name for p in other.iterdir()] == ["notes.txt"]  # the failed download left nothing behind


def test_the_first_lines_say_size_channels_classes_and_split(cli: typer.Typer, tmp_path: Path) -> None:
    shapes = write_shapes(tmp_path / "shapes")
    result = invoke(cli, ["--dataset", "folder", "--data-dir", str(shapes), "--run-dir", str(tmp_path / "run"),
                          *QUICK])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:4] == [
        f"image folder {shapes}: 3 classes (circle, square, triangle); images 40x48 (the size of the first image, "
        f"{shapes / 'circle' / '0.png'}), 3 channels (RGB, as the first image)",
        "warning: the images come in 2 sizes (18 of 32x32, 12 of 40x48): every one is resized to 40x48, "
        "stretched where its aspect ratio differs (--image-size HxW sets the size)",
        "test split: 6 of the 30 images (20% of each class, fixed seed 0) are held out to test; train/ and test/ "
        "sub-folders would choose them instead",
        "split: 30 images, 21 to train, 3 to validate (10% of each class, --val-split), 6 to test",
    ]
    assert lines[4].startswith("training mnist-cnn")


def test_a_chosen_size_and_channels_are_said_as_chosen(tmp_path: Path) -> None:
    shapes = write_shapes(tmp_path / "shapes", sizes=((32, 32),))
    messages: list[str] = []
    load_splits(DatasetSpec(name="folder", data_dir=str(shapes), image_size=(16, 20), channels=1), log=messages.append)
    assert "images 16x20 (--image-size), 1 channel (grayscale, --channels)" in messages[0]
    assert messages[1] == "the 30 images, all 32x32, are resized to 16x20 (--image-size)"


def test_many_classes_are_shortened(tmp_path: Path) -> None:
    names = tuple(f"class{i:02d}" for i in range(12))
    shapes = write_shapes(tmp_path / "many", classes=names, count=5, sizes=((8, 8),))
    messages: list[str] = []
    load_splits(DatasetSpec(name="folder", data_dir=str(shapes)), log=messages.append)
    assert "12 classes (class00, class01, class02, class03, class04, class05, class06, class07 and 4 more)" in messages[0]
    assert not any(m.startswith("warning") or "resized" in m for m in messages)  # one size: nothing resized

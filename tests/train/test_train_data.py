"""Every dataset format on tiny files, the agreed split, and clear errors for bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from edgecnn.train import cifar
from edgecnn.train.data import DatasetError, DatasetSpec, load_splits, split_validation

from tests.helpers.datasets import write_cifar_batches, write_idx_pair, write_image_folder
from tests.helpers.models import random_images


def idx_dir(tmp_path: Path, gz: bool, train: int = 6, test: int = 4) -> Path:
    directory = tmp_path / "idx"
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("t10k", test)):
        write_idx_pair(directory, split, random_images(count, 28, 28, 1)[..., 0], rng.integers(0, 10, count), gz)
    return directory


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_files_gzipped_or_raw(tmp_path: Path, gz: bool, name: str) -> None:
    train, test = load_splits(DatasetSpec(name=name, data_dir=str(idx_dir(tmp_path, gz)), download=False))
    assert train.images.shape == (6, 28, 28, 1) and train.images.dtype == np.uint8
    assert test.images.shape == (4, 28, 28, 1) and test.labels.dtype == np.int64
    assert len(train.class_names) == 10
    assert (train.class_names[0] == "T-shirt/top") == (name == "fashion-mnist")


def test_embedded_default_uses_the_agreed_split(real_mnist: tuple[np.ndarray, np.ndarray]) -> None:
    messages: list[str] = []
    train, test = load_splits(DatasetSpec(), log=messages.append)
    assert (len(train), len(test)) == (8000, 2000)
    np.testing.assert_array_equal(train.labels, real_mnist[1][:8000])
    np.testing.assert_array_equal(test.images[..., 0], real_mnist[0][8000:])
    assert "embedded" in messages[0] and "embedded" in train.source


def test_a_folder_with_only_t10k_files_gets_the_agreed_split(tmp_path: Path, real_mnist) -> None:
    images, labels = real_mnist
    write_idx_pair(tmp_path, "t10k", images, labels, gz=False)
    train, test = load_splits(DatasetSpec(data_dir=str(tmp_path), download=False))
    assert (len(train), len(test)) == (8000, 2000)
    np.testing.assert_array_equal(test.labels, labels[8000:])


def test_validation_split_is_stratified_and_reproducible(real_mnist) -> None:
    train, _ = load_splits(DatasetSpec())
    kept, val = split_validation(train, 0.1, seed=3)
    again, val_again = split_validation(train, 0.1, seed=3)
    _, other = split_validation(train, 0.1, seed=4)
    assert len(kept) + len(val) == 8000 and 790 <= len(val) <= 810
    np.testing.assert_array_equal(val.labels, val_again.labels)
    np.testing.assert_array_equal(kept.images, again.images)
    assert not np.array_equal(val.images, other.images)
    assert set(np.unique(val.labels)) == set(range(10))


def test_cifar_binary_batches(tmp_path: Path) -> None:
    written = write_cifar_batches(tmp_path)
    train, test = load_splits(DatasetSpec(name="cifar10", data_dir=str(tmp_path), download=False))
    assert train.images.shape == (20, 32, 32, 3) and test.images.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(train.images[:4], written["data_batch_1.bin"][0])
    np.testing.assert_array_equal(test.labels, written["test_batch.bin"][1])
    assert train.class_names[0] == "airplane"


def test_cifar_truncated_batch_names_the_file(tmp_path: Path) -> None:
    write_cifar_batches(tmp_path)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"data_batch_3\.bin.*truncated"):
        load_splits(DatasetSpec(name="cifar10", data_dir=str(tmp_path), download=False))


def test_image_folder_png_and_jpeg(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"cat": 10, "dog": 5})
    train, test = load_splits(DatasetSpec(name="folder", data_dir=str(tmp_path)))
    assert train.class_names == ["cat", "dog"]
    assert train.images.shape[1:] == (12, 10, 3)  # the first image's size
    assert len(train) + len(test) == 15 and set(test.labels) == {0, 1}


def test_image_folder_resize_grayscale_and_train_test_subfolders(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", {"a": 3, "b": 3}, mode="L")
    write_image_folder(tmp_path / "test", {"a": 2, "b": 1}, mode="L")
    train, test = load_splits(DatasetSpec(name="folder", data_dir=str(tmp_path), image_size=(8, 8)))
    assert train.images.shape == (6, 8, 8, 1) and test.images.shape == (3, 8, 8, 1)
    np.testing.assert_array_equal(test.labels, [0, 0, 1])


def test_empty_class_folder_names_the_folder(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"cat": 3})
    (tmp_path / "dog").mkdir()
    with pytest.raises(DatasetError, match=r"dog holds no PNG or JPEG"):
        load_splits(DatasetSpec(name="folder", data_dir=str(tmp_path)))


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"cat": 3, "dog": 3})
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match=r"broken\.png is not a readable image"):
        load_splits(DatasetSpec(name="folder", data_dir=str(tmp_path)))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[:-50], r"truncated or corrupt"),
        (lambda data: (2049).to_bytes(4, "big") + data[4:], r"magic number 2049, not 2051"),
        (lambda data: b"", r"too short"),
    ],
    ids=["truncated", "wrong-magic", "empty"],
)
def test_damaged_idx_file_names_the_file(tmp_path: Path, damage, message: str) -> None:
    directory = idx_dir(tmp_path, gz=False)
    path = directory / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DatasetError, match=rf"train-images-idx3-ubyte .*{message}"):
        load_splits(DatasetSpec(data_dir=str(directory), download=False))


def test_corrupt_gzip_names_the_file(tmp_path: Path) -> None:
    directory = idx_dir(tmp_path, gz=True)
    path = directory / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"x" * 100)[:20])
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\.gz is not a complete gzip file"):
        load_splits(DatasetSpec(data_dir=str(directory), download=False))


def test_missing_files_without_downloads_say_where_to_put_them(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"put train-images-idx3-ubyte\.gz, .* in " + str(tmp_path)):
        load_splits(DatasetSpec(name="fashion-mnist", data_dir=str(tmp_path), download=False))


def test_labels_out_of_range_are_corrupt(tmp_path: Path) -> None:
    directory = tmp_path / "idx"
    write_idx_pair(directory, "train", random_images(3, 28, 28, 1)[..., 0], np.array([1, 2, 12]), gz=False)
    write_idx_pair(directory, "t10k", random_images(3, 28, 28, 1)[..., 0], np.array([1, 2, 3]), gz=False)
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte holds label 12"):
        load_splits(DatasetSpec(data_dir=str(directory), download=False))


def test_cifar_archive_is_unpacked_without_trusting_its_paths(tmp_path: Path) -> None:
    import tarfile

    source = tmp_path / "source" / "cifar-10-batches-bin"
    write_cifar_batches(source)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with tarfile.open(data_dir / cifar.ARCHIVE, "w:gz") as tar:
        tar.add(source, arcname="cifar-10-batches-bin")
    train, _ = load_splits(DatasetSpec(name="cifar10", data_dir=str(data_dir), download=False))
    assert len(train) == 20
    assert sorted(p.name for p in data_dir.iterdir() if p.suffix == ".bin")[0] == "data_batch_1.bin"

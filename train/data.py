"""Datasets by name: where their files are, how they are split, and loading them into memory.

``load_splits(spec)`` returns (train, test) ImageSets of uint8 NHWC images. Public sets are
read from ``spec.data_dir`` (or a cache folder) and downloaded with checksum checks when
missing. MNIST with no data_dir is the embedded default: the MNIST test set vendored in
``train/data/``, split as agreed (first 8,000 images to train, last 2,000 to test). The
same agreed split applies to any folder that holds only the t10k files.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.train import cifar, folder
from edgecnn.train.download import DownloadFailed, RemoteFile, fetch_missing
from edgecnn.train.files import folder_to_read_problem
from edgecnn.train.idx import read_idx_pair
from edgecnn.train.imageset import DatasetError, ImageSet, check_labels

__all__ = ["DATASETS", "DatasetError", "DatasetSpec", "ImageSet", "carve", "load_splits", "split_validation"]

Log = Callable[[str], None]

DATASETS = ("mnist", "fashion-mnist", "cifar10", "folder")
EMBEDDED_DIR = Path(__file__).parent / "data"
AGREED_TRAIN_IMAGES = 8000  # of the 10,000 t10k images; the other 2,000 are the test set
FOLDER_TEST_SEED = 0  # the folder test split never moves with the training seed


@dataclass(frozen=True)
class PublicDataset:
    base_url: str
    files: list[RemoteFile]
    class_names: list[str]


PUBLIC: dict[str, PublicDataset] = {
    "mnist": PublicDataset(
        "https://ossci-datasets.s3.amazonaws.com/mnist",
        [
            RemoteFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            RemoteFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            RemoteFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            RemoteFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        ],
        [str(digit) for digit in range(10)],
    ),
    "fashion-mnist": PublicDataset(
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion",
        [
            RemoteFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            RemoteFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            RemoteFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            RemoteFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        ],
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    ),
    "cifar10": PublicDataset(
        "https://www.cs.toronto.edu/~kriz",
        [RemoteFile(cifar.ARCHIVE, "c32a1d4ab5d03f1284b67883e8d87530")],
        cifar.CLASS_NAMES,
    ),
}


@dataclass(frozen=True)
class DatasetSpec:
    name: str = "mnist"
    data_dir: str | None = None  # None: the embedded set (mnist) or the download cache (others)
    image_size: tuple[int, int] | None = None  # folder: resize to (height, width); None = first image's size
    channels: int | None = None  # folder: 1 (grayscale) or 3 (RGB); None = as the first image
    test_split: float = 0.2  # folder without train/ and test/ sub-folders: share of each class held out
    download: bool = True  # fetch missing public files (checksums verified)
    mirror: str | None = None  # base URL to download from instead of the official one

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "DatasetSpec":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        if known.get("image_size") is not None:
            known["image_size"] = tuple(known["image_size"])
        return cls(**known)


def load_splits(spec: DatasetSpec, log: Log = lambda message: None) -> tuple[ImageSet, ImageSet]:
    """The (train, test) splits of ``spec``; ``log`` receives one line per notable step (download, defaults)."""
    if spec.name not in DATASETS:
        raise DatasetError(f"unknown dataset {spec.name!r}; choose one of: {', '.join(DATASETS)}")
    if spec.name == "folder":
        return _load_folder(spec, log)
    if spec.name == "cifar10":
        return _load_cifar(spec, log)
    return _load_idx(spec, log)


def carve(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, carved), carving ``fraction`` of every class at random under ``seed``."""
    if not 0.0 <= fraction < 1.0:
        raise DatasetError(f"a split fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(labels))
    kept, carved = [], []
    for label in np.unique(labels):
        members = order[labels[order] == label]
        count = int(round(len(members) * fraction))
        carved.append(members[:count])
        kept.append(members[count:])
    if not kept:
        return np.arange(0), np.arange(0)
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(carved))


def split_validation(train: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet | None]:
    """Carve a stratified validation set of ``fraction`` from ``train`` (None when ``fraction`` is 0)."""
    if fraction == 0:
        return train, None
    kept, carved = carve(train.labels, fraction, seed)
    if len(carved) == 0 or len(kept) == 0:
        raise DatasetError(f"a validation split of {fraction} leaves no images on one side of {len(train)}")
    percent = f"{fraction:.0%}"
    return (
        train.subset(kept, f"{train.source}, less a {percent} validation split (seed {seed})"),
        train.subset(carved, f"{percent} of {train.source} (seed {seed})"),
    )


def default_data_dir(name: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "edgecnn" / "datasets" / name


# --- MNIST and Fashion-MNIST --------------------------------------------------------


def _idx_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx(spec: DatasetSpec, log: Log) -> tuple[ImageSet, ImageSet]:
    public = PUBLIC[spec.name]
    embedded = spec.name == "mnist" and spec.data_dir is None
    directory = EMBEDDED_DIR if embedded else Path(spec.data_dir or default_data_dir(spec.name))
    if embedded:
        log("no --data-dir given: using the embedded MNIST set shipped with edgecnn (the 10,000 MNIST test "
            "images, first 8,000 to train, last 2,000 to test)")

    def pair(split: str) -> tuple[Path, Path] | None:
        images = _idx_file(directory, f"{split}-images-idx3-ubyte")
        labels = _idx_file(directory, f"{split}-labels-idx1-ubyte")
        return (images, labels) if images and labels else None

    test_files = pair("t10k")
    any_train_file = _idx_file(directory, "train-images-idx3-ubyte") or _idx_file(directory, "train-labels-idx1-ubyte")
    if test_files and not any_train_file:
        return _agreed_split(spec, public, test_files, directory, embedded)
    if not (test_files and pair("train")):
        _fetch(spec, public, directory, log)
    train_files, test_files = pair("train"), pair("t10k")
    assert train_files and test_files
    return (
        _idx_set(spec, public, train_files, f"{spec.name} training files in {directory}"),
        _idx_set(spec, public, test_files, f"{spec.name} t10k test files in {directory}"),
    )


def _agreed_split(
    spec: DatasetSpec, public: PublicDataset, files: tuple[Path, Path], directory: Path, embedded: bool
) -> tuple[ImageSet, ImageSet]:
    where = "the embedded MNIST test set" if embedded else f"{spec.name} t10k files in {directory}"
    whole = _idx_set(spec, public, files, where)
    if len(whole) <= AGREED_TRAIN_IMAGES:
        raise DatasetError(
            f"{files[0]} holds {len(whole)} images; the t10k-only split needs more than {AGREED_TRAIN_IMAGES}"
        )
    first, last = AGREED_TRAIN_IMAGES, len(whole)
    return (
        whole.subset(np.arange(first), f"{where}, images 0-{first - 1}"),
        whole.subset(np.arange(first, last), f"{where}, images {first}-{last - 1}"),
    )


def _idx_set(spec: DatasetSpec, public: PublicDataset, files: tuple[Path, Path], source: str) -> ImageSet:
    images, labels = read_idx_pair(*files)
    check_labels(labels, len(public.class_names), files[1])
    return ImageSet(images, labels, list(public.class_names), spec.name, source)


# --- CIFAR-10 -----------------------------------------------------------------------


def _cifar_directory(directory: Path) -> Path | None:
    for candidate in (directory, directory / "cifar-10-batches-bin"):
        if all((candidate / name).is_file() for name in cifar.TRAIN_FILES + cifar.TEST_FILES):
            return candidate
    return None


def _load_cifar(spec: DatasetSpec, log: Log) -> tuple[ImageSet, ImageSet]:
    public = PUBLIC["cifar10"]
    directory = Path(spec.data_dir or default_data_dir(spec.name))
    batches = _cifar_directory(directory)
    if batches is None:
        if not (directory / cifar.ARCHIVE).is_file():
            _fetch(spec, public, directory, log)
        log(f"unpacking {directory / cifar.ARCHIVE}")
        cifar.extract_archive(directory / cifar.ARCHIVE, directory)
        batches = _cifar_directory(directory)
        if batches is None:
            raise DatasetError(f"{directory / cifar.ARCHIVE} does not hold the CIFAR-10 binary batch files")
    names = cifar.read_class_names(batches)
    sets = []
    for files, part in ((cifar.TRAIN_FILES, "training"), (cifar.TEST_FILES, "test")):
        images, labels = cifar.read_batches([batches / name for name in files])
        check_labels(labels, len(names), batches / files[0])
        sets.append(ImageSet(images, labels, names, spec.name, f"cifar10 {part} batches in {batches}"))
    return sets[0], sets[1]


# --- downloads ----------------------------------------------------------------------


def _fetch(spec: DatasetSpec, public: PublicDataset, directory: Path, log: Log) -> None:
    """Download the public files into ``directory``, or fail with one sentence saying where to put them."""
    _check_download_folder(spec, directory)
    names = ", ".join(remote.name for remote in public.files)
    how = f"put {names} in {directory}"
    if spec.name == "mnist":
        how += ", or leave out --data-dir to use the embedded MNIST set"
    if not spec.download:
        raise DatasetError(f"{spec.name} is not in {directory} and downloads are off: {how}")
    created = not directory.exists()
    already = len(list(directory.iterdir())) if directory.is_dir() else 0
    beside = f", beside the {already:,} entr{'ies' if already > 1 else 'y'} already there" if already else ""
    count = len(public.files)
    log(f"{spec.name} is not in {directory}: downloading its {count} file{'s' * (count > 1)} into it{beside}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fetch_missing(public.files, spec.mirror or public.base_url, directory, log)
    except (DownloadFailed, OSError) as exc:
        if created and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
        raise DatasetError(f"{spec.name} is not in {directory} and could not be downloaded ({exc}): {how}") from None


def _check_download_folder(spec: DatasetSpec, directory: Path) -> None:
    """Refuse a download folder that is a file, or the user's own image folder (nothing is written into it)."""
    if directory.exists() and not directory.is_dir():
        raise DatasetError(f"{directory}: a file, not a folder to hold the {spec.name} files")
    if folder.is_image_folder(directory):
        raise DatasetError(f"{directory} holds one sub-folder of images per class, not the {spec.name} files: "
                           "use --dataset folder (nothing was downloaded into it)")


# --- image folders ------------------------------------------------------------------


def _load_folder(spec: DatasetSpec, log: Log) -> tuple[ImageSet, ImageSet]:
    if spec.data_dir is None:
        raise DatasetError("the folder dataset needs --data-dir: a folder with one sub-folder of images per class")
    directory = Path(spec.data_dir)
    problem = folder_to_read_problem(directory)
    if problem:
        raise DatasetError(f"image folder {directory}: {problem}")
    if (directory / "train").is_dir() and (directory / "test").is_dir():
        train_dir, test_dir = directory / "train", directory / "test"
    else:
        train_dir, test_dir = directory, None
    class_names = [p.name for p in folder.class_folders(train_dir)]
    first_image = folder.image_files(train_dir / class_names[0])[0]
    height, width, channels = folder.image_format(first_image, spec.image_size, spec.channels)
    if channels not in (1, 3):
        raise DatasetError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    log(_folder_format(directory, class_names, (height, width), channels, spec, first_image))
    images, labels, sizes = folder.read_folder(train_dir, class_names, height, width, channels)
    whole = ImageSet(images, labels, class_names, "folder", f"images in {train_dir}")
    if test_dir is not None:
        test_images, test_labels, test_sizes = folder.read_folder(test_dir, class_names, height, width, channels)
        _log_resizing(sizes + test_sizes, (height, width), log)
        log(f"test split: the {len(test_labels):,} images in {test_dir} (train/ and test/ sub-folders)")
        return whole, ImageSet(test_images, test_labels, class_names, "folder", f"images in {test_dir}")
    _log_resizing(sizes, (height, width), log)
    kept, held_out = carve(labels, spec.test_split, FOLDER_TEST_SEED)
    if len(held_out) == 0:
        raise DatasetError(
            f"{directory} has too few images to hold out a {spec.test_split:.0%} test split; add images or "
            "give it train/ and test/ sub-folders"
        )
    percent = f"{spec.test_split:.0%}"
    log(f"test split: {len(held_out):,} of the {len(labels):,} images ({percent} of each class, fixed seed "
        f"{FOLDER_TEST_SEED}) are held out to test; train/ and test/ sub-folders would choose them instead")
    return (
        whole.subset(kept, f"images in {directory}, less a {percent} test split"),
        whole.subset(held_out, f"{percent} of the images in {directory} (fixed seed {FOLDER_TEST_SEED})"),
    )


def _shortened(names: list[str], limit: int = 8) -> str:
    """``a, b, c`` or, past ``limit`` names, ``a, b, ..., h and 12 more``."""
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit:,} more"


def _folder_format(
    directory: Path, class_names: list[str], size: tuple[int, int], channels: int, spec: DatasetSpec, first: Path
) -> str:
    """One line: the classes, and the image size and channels the model will take, with where each came from."""
    size_from = "--image-size" if spec.image_size else f"the size of the first image, {first}"
    channels_from = "--channels" if spec.channels else "as the first image"
    mode = "RGB" if channels == 3 else "grayscale"
    return (f"image folder {directory}: {len(class_names):,} classes ({_shortened(class_names)}); images "
            f"{size[0]}x{size[1]} ({size_from}), {channels} channel{'s' * (channels > 1)} ({mode}, {channels_from})")


def _log_resizing(sizes: Counter, size: tuple[int, int], log: Log) -> None:
    """Say when images are resized: a warning when they come in several sizes (they are stretched to one)."""
    target = f"{size[0]}x{size[1]}"
    if len(sizes) > 1:
        found = ", ".join(f"{count:,} of {h}x{w}" for (h, w), count in sizes.most_common())
        log(f"warning: the images come in {len(sizes)} sizes ({found}): every one is resized to {target}, "
            "stretched where its aspect ratio differs (--image-size HxW sets the size)")
    elif sizes and size not in sizes:
        (h, w), count = next(iter(sizes.items()))
        log(f"the {count:,} images, all {h}x{w}, are resized to {target} (--image-size)")

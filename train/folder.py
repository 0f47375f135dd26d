"""Image folders, one sub-folder per class (as Keras ``flow_from_directory`` reads them).

Images are PNG or JPEG, decoded with Pillow through the same codec the server uses, and
resized to one size: the ``image_size`` asked for, or else the size of the first image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgecnn.serve.images import to_array
from edgecnn.train.imageset import DatasetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def class_folders(directory: Path) -> list[Path]:
    folders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"{directory} has no class sub-folders (expected one folder of images per class)")
    if len(folders) == 1:
        raise DatasetError(f"{directory} has one class sub-folder ({folders[0].name}); a classifier needs at least "
                           "two, one folder of images per class")
    return folders


def image_files(folder: Path) -> list[Path]:
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise DatasetError(f"class folder {folder} holds no PNG or JPEG images")
    return files


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path} is not a readable image ({exc})") from None


def image_format(path: Path, image_size: tuple[int, int] | None, channels: int | None) -> tuple[int, int, int]:
    """(height, width, channels) for the dataset: as asked, or else taken from the image at ``path``."""
    with _open(path) as image:
        height, width = image_size or (image.height, image.width)
        if channels is None:
            channels = 1 if image.mode in ("1", "L", "I", "I;16", "F") else 3
    return height, width, channels


def read_folder(
    directory: Path, class_names: list[str], height: int, width: int, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (N, H, W, C) and labels (N,) from ``directory/<class>/*.png|jpg``."""
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        folder = directory / name
        if not folder.is_dir():
            raise DatasetError(f"{directory} has no folder for class {name!r}")
        files = image_files(folder)
        paths += files
        labels += [label] * len(files)
    images = np.empty((len(paths), height, width, channels), dtype=np.uint8)
    for i, path in enumerate(paths):
        with _open(path) as image:
            images[i] = to_array(image, height, width, channels)
    return images, np.asarray(labels, dtype=np.int64)

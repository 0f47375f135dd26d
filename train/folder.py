"""Image folders, one sub-folder per class (as Keras ``flow_from_directory`` reads them).

Images are PNG or JPEG (the formats the server decodes), decoded with Pillow through the same codec
the server uses, and resized to one size: the ``image_size`` asked for, or else the size of the first
image. Nothing is ever written into the folder.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgecnn.serve.images import IMAGE_SUFFIXES, to_array
from edgecnn.train.imageset import DatasetError

Size = tuple[int, int]  # (height, width)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and _visible(path)


def is_image_folder(directory: Path) -> bool:
    """Whether ``directory`` is laid out as the folder dataset reads it: sub-folders that hold images
    (``NAME/*.png``), or a ``train/`` folder of such sub-folders. Reads names only, never a pixel."""
    try:
        for sub in directory.iterdir():
            if sub.is_dir() and _visible(sub) and any(_is_image_file(p) for p in sub.iterdir()):
                return True
    except OSError:  # missing, a file, or unreadable: not an image folder
        return False
    return (directory / "train").is_dir() and is_image_folder(directory / "train")


def class_folders(directory: Path) -> list[Path]:
    """The class sub-folders of ``directory``, sorted; a DatasetError unless there are at least two."""
    folders = sorted(p for p in directory.iterdir() if p.is_dir() and _visible(p))
    if not folders:
        raise DatasetError(f"{directory} has no class sub-folders (expected one folder of images per class)")
    if len(folders) == 1:
        raise DatasetError(f"{directory} has one class sub-folder ({folders[0].name}); a classifier needs at least "
                           "two, one folder of images per class")
    return folders


def image_files(folder: Path) -> list[Path]:
    """The PNG and JPEG files directly in ``folder``, sorted; a DatasetError when there are none."""
    files = sorted(p for p in folder.iterdir() if _is_image_file(p))
    if not files:
        raise DatasetError(f"class folder {folder} holds no PNG or JPEG images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path} is not a readable image ({exc})") from None


def image_format(path: Path, image_size: Size | None, channels: int | None) -> tuple[int, int, int]:
    """(height, width, channels) for the dataset: as asked, or else taken from the image at ``path``."""
    with _open(path) as image:
        height, width = image_size or (image.height, image.width)
        if channels is None:
            channels = 1 if image.mode in ("1", "L", "I", "I;16", "F") else 3
    return height, width, channels


def read_folder(
    directory: Path, class_names: list[str], height: int, width: int, channels: int
) -> tuple[np.ndarray, np.ndarray, Counter[Size]]:
    """Images as uint8 (N, H, W, C), labels (N,) from ``directory/<class>/*.png|jpg``, and how many images
    of each original (height, width) there were before resizing."""
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
    sizes: Counter[Size] = Counter()
    for i, path in enumerate(paths):
        with _open(path) as image:
            sizes[(image.height, image.width)] += 1
            images[i] = to_array(image, height, width, channels)
    return images, np.asarray(labels, dtype=np.int64), sizes

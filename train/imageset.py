"""The in-memory form of a dataset split, and the one error every dataset reader raises."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DatasetError(Exception):
    """A dataset that cannot be found, fetched or read; the message is one sentence naming the file."""


@dataclass
class ImageSet:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]
    name: str
    source: str = ""  # where these images came from, in words (shown to the user, kept in run.json)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    def subset(self, indices: np.ndarray, source: str) -> "ImageSet":
        return ImageSet(self.images[indices], self.labels[indices], self.class_names, self.name, source)


def check_labels(labels: np.ndarray, num_classes: int, path: object) -> None:
    """Labels must index ``class_names``; a file with others is corrupt."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{path} holds label {int(labels.max())}, outside 0..{num_classes - 1}: the file is corrupt"
        )

"""Every tunable of a training run, with its default: the `edgecnn train` options read their defaults here.

Torch-free, so the CLI can show its help without loading torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgecnn.train.data import DatasetSpec

OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda")
# Mirrored clothes and photos are still clothes and photos; mirrored digits are not digits, and
# folders may hold anything, so only these flip by default.
FLIP_DATASETS = ("fashion-mnist", "cifar10")


@dataclass(frozen=True)
class Augmentation:
    rotation: float = 0.0  # degrees: each image turns by a uniform angle in [-rotation, rotation]
    shift: float = 0.0  # fraction of width and height: each image moves by up to this much
    hflip: bool = False  # mirror half of the images left to right

    @property
    def enabled(self) -> bool:
        return bool(self.rotation or self.shift or self.hflip)


class SettingsError(ValueError):
    """Settings that contradict each other or are out of range."""


@dataclass
class TrainSettings:
    # data
    dataset: str = "mnist"
    data_dir: str | None = None
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    download: bool = True
    mirror: str | None = None
    val_split: float = 0.1
    # model
    model: str = "resnet-small"
    model_options: dict[str, Any] = field(default_factory=dict)
    # optimisation
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    learning_rate: float | None = None  # None: the model's own default (models.default_learning_rate)
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    label_smoothing: float = 0.0
    patience: int = 0  # epochs without a better validation accuracy before stopping; 0 = never stop early
    # augmentation (applied to training images only)
    rotation: float = 0.0
    shift: float = 0.0
    hflip: bool | None = None  # None: on for FLIP_DATASETS, off otherwise
    # run
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # torch CPU threads; None = the cores this process may use
    output_dir: str = "runs"
    run_dir: str | None = None  # None: <output_dir>/<model>-<dataset>-<time>

    def check(self) -> None:
        """Raise SettingsError for values out of range or in conflict."""
        choices = {"optimizer": OPTIMIZERS, "lr_schedule": LR_SCHEDULES, "device": DEVICES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        # Each range by its flag (None: the default, e.g. the model's own learning rate).
        positive = {"--epochs": self.epochs, "--batch-size": self.batch_size, "--lr": self.learning_rate}
        at_least_zero = {"--weight-decay": self.weight_decay, "--patience": self.patience,
                         "--rotation": self.rotation, "--threads": self.threads}
        fractions = {"--val-split": self.val_split, "--label-smoothing": self.label_smoothing, "--shift": self.shift}
        for flag, value in positive.items():
            if value is not None and value <= 0:
                raise SettingsError(f"{flag} must be positive, got {value}")
        for flag, value in at_least_zero.items():
            if value is not None and value < 0:
                raise SettingsError(f"{flag} must be >= 0, got {value}")
        for flag, value in fractions.items():
            if not 0.0 <= value < 1.0:
                raise SettingsError(f"{flag} must be in [0, 1), got {value}")
        if self.patience and not self.val_split:
            raise SettingsError("early stopping (--patience) needs a validation split: set --val-split above 0")

    def dataset_spec(self) -> DatasetSpec:
        return DatasetSpec(
            name=self.dataset, data_dir=self.data_dir, image_size=self.image_size, channels=self.channels,
            download=self.download, mirror=self.mirror,
        )

    def augmentation(self) -> Augmentation:
        hflip = self.hflip if self.hflip is not None else self.dataset in FLIP_DATASETS
        return Augmentation(rotation=self.rotation, shift=self.shift, hflip=hflip)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "TrainSettings":
        known = {f.name for f in fields(cls)}
        settings = cls(**{k: v for k, v in values.items() if k in known})
        if settings.image_size is not None:
            settings.image_size = (int(settings.image_size[0]), int(settings.image_size[1]))
        return settings

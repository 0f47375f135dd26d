"""The preprocessing a trained model expects, recorded in run.json for export.

model_input = (uint8 * scale - mean) / std per channel, NCHW, with scale = 1/255. The mean
and std are measured on the training images of the run (after the validation split), so
any dataset, folders included, gets them without a table of per-dataset constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

SCALE = 1.0 / 255.0


@dataclass(frozen=True)
class Normalisation:
    mean: list[float]
    std: list[float]
    scale: float = SCALE

    @classmethod
    def of_images(cls, images: np.ndarray, chunk: int = 1024) -> "Normalisation":
        """Per-channel mean and std of uint8 NHWC ``images`` after scaling to [0, 1]."""
        channels = images.shape[-1]
        total, squares = np.zeros(channels), np.zeros(channels)
        for start in range(0, len(images), chunk):  # in chunks: a float64 copy of CIFAR-10 would take 1.2 GB
            pixels = images[start : start + chunk].reshape(-1, channels).astype(np.float64)
            total += pixels.sum(axis=0)
            squares += (pixels**2).sum(axis=0)
        count = max(images.size // channels, 1)
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        std = np.maximum(std * SCALE, 1e-3)  # a constant channel must not divide by zero
        return cls(mean=[float(m) for m in mean * SCALE], std=[float(s) for s in std])

    def to_json(self) -> dict[str, Any]:
        return {"scale": self.scale, "mean": self.mean, "std": self.std}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "Normalisation":
        return cls(mean=[float(m) for m in values["mean"]], std=[float(s) for s in values["std"]],
                   scale=float(values["scale"]))

    def __call__(self, scaled: "torch.Tensor") -> "torch.Tensor":
        """Normalise NCHW images already multiplied by ``scale``."""
        mean, std = _channel_tensors(tuple(self.mean), tuple(self.std), scaled.dtype, scaled.device)
        return (scaled - mean) / std

    def scaled(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """uint8 NCHW pixels as float32 in [0, 1] (where augmentation happens, before normalisation)."""
        return pixels.float() * self.scale

    def model_input(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """uint8 NCHW pixels as the model takes them: the trainer's and the export check's one preprocessing."""
        return self(self.scaled(pixels))


@lru_cache(maxsize=16)
def _channel_tensors(mean: tuple, std: tuple, dtype: "torch.dtype", device: "torch.device"):
    """Mean and std as [1, C, 1, 1] tensors, made once per device: not a host-to-device copy every step."""
    import torch

    shape = (1, len(mean), 1, 1)
    return (torch.tensor(mean, dtype=dtype, device=device).view(shape),
            torch.tensor(std, dtype=dtype, device=device).view(shape))

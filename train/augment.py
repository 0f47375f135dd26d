"""Random image augmentation as the seed tutorials teach it: rotation, width/height shift, horizontal flip.

One random affine transform per image (torch only, no torchvision), applied to a batch of
NCHW images scaled to [0, 1] before normalisation, so uncovered borders are black like the
backgrounds of MNIST-style images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgecnn.train.settings import Augmentation


def augment(images: torch.Tensor, augmentation: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """``images`` with one random transform each; the random draws come from ``generator`` (CPU)."""
    n = images.shape[0]

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * limit

    angle = uniform(math.radians(augmentation.rotation))
    # affine_grid works in [-1, 1] coordinates, so a shift by a fraction f of the image is 2f.
    shift_x, shift_y = uniform(2 * augmentation.shift), uniform(2 * augmentation.shift)
    flip = torch.ones(n)
    if augmentation.hflip:
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift_x], 1), torch.stack([sin * flip, cos, shift_y], 1)], 1
    ).to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

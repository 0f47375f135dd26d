"""Small pieces users rely on indirectly: atomic writes, augmentation, the learning-rate schedules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from edgecnn.train.augment import augment
from edgecnn.train.files import atomic_path, atomic_write_text
from edgecnn.train.settings import Augmentation
from edgecnn.train.trainer import lr_factor


def test_atomic_write_replaces_whole_files_only(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "model.onnx"
    atomic_write_text(target, "first")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temp:
            temp.write_text("half")
            raise RuntimeError("export failed")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]  # no temporary left behind
    assert target.stat().st_mode & 0o044  # readable by others, like any ordinary file


def test_flip_only_augmentation_mirrors_or_keeps_each_image() -> None:
    images = torch.rand(16, 1, 6, 5)
    out = augment(images, Augmentation(hflip=True), torch.Generator().manual_seed(0))
    mirrored = [torch.allclose(o, i.flip(-1), atol=1e-5) for o, i in zip(out, images)]
    kept = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, images)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)


def test_augmentation_is_reproducible_under_its_generator() -> None:
    images = torch.rand(4, 3, 8, 8)
    settings = Augmentation(rotation=15, shift=0.2, hflip=True)
    first = augment(images, settings, torch.Generator().manual_seed(1))
    again = augment(images, settings, torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and first.shape == images.shape and not torch.allclose(first, images)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_learning_rate_schedules_start_and_end_sensibly(schedule: str) -> None:
    factors = [lr_factor(schedule, step, 100) for step in range(101)]
    assert max(factors) == pytest.approx(1.0, abs=0.01) and min(factors) >= 0
    if schedule != "constant":
        assert factors[-1] == pytest.approx(0.0, abs=1e-6)


def test_normalisation_is_the_per_channel_mean_and_std_of_the_training_pixels() -> None:
    import numpy as np
    from edgecnn.train.normalisation import Normalisation

    images = np.random.default_rng(0).integers(0, 256, (50, 6, 7, 3), dtype=np.uint8)
    normalisation = Normalisation.of_images(images, chunk=8)
    pixels = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(normalisation.mean, pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(normalisation.std, pixels.std(axis=0), rtol=1e-9)
    scaled = torch.from_numpy(images).permute(0, 3, 1, 2).float() * normalisation.scale
    normalised = normalisation(scaled)
    torch.testing.assert_close(normalised.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)

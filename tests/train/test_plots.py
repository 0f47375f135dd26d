"""Training curves label whole epochs only: a two-epoch run has no 1.5 on its x axis."""

from __future__ import annotations

import matplotlib.pyplot as plt
from edgecnn.train import plots


def test_curves_put_only_whole_epochs_on_the_x_axis(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: saved.append(figure))
    epochs = [{"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "train_accuracy": 0.7, "val_accuracy": 0.75},
              {"epoch": 2, "train_loss": 0.5, "val_loss": 0.6, "train_accuracy": 0.85, "val_accuracy": 0.8}]
    plots.plot_curves(epochs, tmp_path / "curves.png")
    for axes in saved[0].axes:
        ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    plt.close(saved[0])

"""The rich progress bar of a training epoch: loss, accuracy and images/s as it runs, one summary line after.

On several processes rank 0 shows it: images and images/s count all processes (its own times
``world_size``, as every process takes the same share), the running loss and accuracy are its own.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

REFRESH_S = 0.25  # reading the running loss syncs the device, so do it a few times a second at most


class EpochProgress:
    def __init__(self, console: Console, enabled: bool = True, world_size: int = 1) -> None:
        self.console = console
        self.world_size = world_size
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[accuracy]:.4f}  {task.fields[rate]:,.0f} img/s"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            transient=True,
        )
        self.task = None
        self.seen = 0
        self.started = self.shown = 0.0

    def __enter__(self) -> "EpochProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def start_epoch(self, epoch: int, epochs: int, images: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(
            "train", total=images, epoch=f"{epoch}/{epochs}", loss=0.0, accuracy=0.0, rate=0.0
        )
        self.seen = 0
        self.started = self.shown = time.perf_counter()

    def advance(self, images: int, total_loss: torch.Tensor, correct: torch.Tensor) -> None:
        self.seen += images
        now = time.perf_counter()
        fields: dict[str, float] = {}
        if now - self.shown >= REFRESH_S:
            self.shown = now
            fields = {"loss": float(total_loss) / self.seen, "accuracy": float(correct) / self.seen,
                      "rate": self.seen * self.world_size / (now - self.started)}
        self.progress.update(self.task, advance=images * self.world_size, **fields)

    def end_epoch(self, metrics: dict[str, Any]) -> None:
        rate = self.seen * self.world_size / max(time.perf_counter() - self.started, 1e-9)
        line = (f"epoch {metrics['epoch']}: loss {metrics['train_loss']:.4f} acc {metrics['train_accuracy']:.4f}")
        if "val_accuracy" in metrics:
            line += f"  val loss {metrics['val_loss']:.4f} val acc {metrics['val_accuracy']:.4f}"
        line += f"  {rate:,.0f} img/s  {metrics['seconds']:.1f} s"
        metrics["images_per_s"] = rate
        self.console.print(line)

"""The training loop: data in memory, Adam and cross-entropy by default, best weights by validation accuracy.

``train(settings)`` runs a new training and returns its run directory; ``resume(run_dir)``
continues one from its last finished epoch, reproducing what one uninterrupted run would
have done. The run directory is created only when the first epoch ends, and every file in
it is written atomically, so a failed start leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from edgecnn.train import checkpoint, plots
from edgecnn.train.augment import augment
from edgecnn.train.data import load_splits, split_validation
from edgecnn.train.evaluate import confusion_matrix, predict
from edgecnn.train.imageset import ImageSet
from edgecnn.train.models import check_options, count_parameters, create_model, default_learning_rate
from edgecnn.train.normalisation import Normalisation
from edgecnn.train.progress import EpochProgress
from edgecnn.train.settings import Augmentation, SettingsError, TrainSettings
from edgecnn.train.tensors import DeviceImages


@dataclass
class Counters:
    """Where the loop stands; saved with the resume state after every epoch."""

    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    best_val_accuracy: float = -1.0
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    wall_time_s: float = 0.0  # in training epochs, validation included, over all sessions of the run


def train(settings: TrainSettings, progress: bool = True, console: Console | None = None) -> Path:
    """Train a new model as ``settings`` say; returns the run directory."""
    return _run(settings, None, progress, console or Console(stderr=True, soft_wrap=True))


def resume(
    run_dir: str | Path, *, epochs: int | None = None, device: str | None = None, threads: int | None = None,
    progress: bool = True, console: Console | None = None,
) -> Path:
    """Continue ``run_dir`` from its last finished epoch with its own settings; ``epochs`` may extend it."""
    info = checkpoint.read_run_info(Path(run_dir))
    if "settings" not in info:
        raise checkpoint.RunDirError(f"{Path(run_dir) / checkpoint.RUN_JSON} lacks the settings needed to resume")
    settings = TrainSettings.from_json(info["settings"])
    settings.epochs = epochs or settings.epochs
    settings.device = device or settings.device
    settings.threads = threads or settings.threads
    return _run(settings, Path(run_dir), progress, console or Console(stderr=True, soft_wrap=True))


@dataclass
class Loop:
    """Everything a training epoch works with."""

    settings: TrainSettings
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    data: DeviceImages
    augmentation: Augmentation
    generator: torch.Generator  # shuffling and augmentation draws
    counters: Counters
    total_steps: int


def build_loop(settings: TrainSettings, train_set: ImageSet, normalise: Normalisation, device: torch.device) -> Loop:
    """A fresh model and optimizer for ``train_set``, seeded by ``settings.seed``."""
    if settings.learning_rate is None:
        settings = dataclasses.replace(settings, learning_rate=default_learning_rate(settings.model))
    torch.manual_seed(settings.seed)
    model = _model(settings, train_set).to(device)
    return Loop(
        settings=settings,
        model=model,
        optimizer=_optimizer(settings, model),
        loss_fn=nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing),
        data=DeviceImages(train_set, normalise, device),
        augmentation=settings.augmentation(),
        generator=torch.Generator().manual_seed(settings.seed),
        counters=Counters(),
        total_steps=math.ceil(len(train_set) / settings.batch_size) * settings.epochs,
    )


def _run(settings: TrainSettings, resume_dir: Path | None, progress: bool, console: Console) -> Path:
    settings.check()
    check_options(settings.model, settings.model_options)  # fail before loading any data
    device = _device(settings.device)
    torch.set_num_threads(settings.threads or len(os.sched_getaffinity(0)))
    train_set, test_set = load_splits(settings.dataset_spec(), log=console.print)
    train_set, val_set = split_validation(train_set, settings.val_split, settings.seed)
    normalise = Normalisation.of_images(train_set.images)
    loop = build_loop(settings, train_set, normalise, device)
    settings = loop.settings  # with the learning rate filled in
    val_data = DeviceImages(val_set, normalise, device) if val_set else None
    run_dir = resume_dir or _new_run_dir(settings)
    info = _run_info(settings, train_set, val_set, test_set, normalise)
    if resume_dir is not None:
        loop.counters = _restore(resume_dir, loop, info)
        console.print(f"resuming {resume_dir} after epoch {loop.counters.epoch}")

    console.print(f"training {settings.model} ({count_parameters(loop.model):,} parameters) "
                  f"on {len(train_set):,} {train_set.name} images, device {device}, run directory {run_dir}")
    try:
        _epochs(loop, val_data, run_dir, info, EpochProgress(console, enabled=progress))
    except KeyboardInterrupt:
        if (run_dir / checkpoint.RESUME_STATE).exists():
            console.print(f"interrupted: continue with `edgecnn train --resume {run_dir}`")
        raise
    _finish(run_dir, loop.model, test_set, normalise, device, loop.counters, info)
    console.print(f"test accuracy {info['test_accuracy']:.4f} on {len(test_set):,} images "
                  f"(best epoch {info['best_epoch']}), {loop.counters.wall_time_s:.1f} s; run directory {run_dir}")
    return run_dir


def _epochs(
    loop: Loop, val_data: DeviceImages | None, run_dir: Path, info: dict[str, Any], bar: EpochProgress
) -> None:
    """Train, validate and checkpoint epoch after epoch until the last one or early stopping."""
    settings, counters = loop.settings, loop.counters
    with bar:
        while counters.epoch < settings.epochs:
            started = time.perf_counter()
            bar.start_epoch(counters.epoch + 1, settings.epochs, len(loop.data))
            metrics = train_epoch(loop, bar)
            if val_data is not None:
                predicted, metrics["val_loss"] = predict(loop.model, val_data)
                metrics["val_accuracy"] = float((predicted == val_data.labels.cpu().numpy()).mean())
            metrics["seconds"] = time.perf_counter() - started
            counters.wall_time_s += metrics["seconds"]
            counters.epoch += 1
            info["epochs"].append({"epoch": counters.epoch, **metrics})
            bar.end_epoch(info["epochs"][-1])
            _checkpoint(run_dir, loop, info, metrics)
            if settings.patience and counters.epochs_without_improvement >= settings.patience:
                bar.console.print(f"stopping early: no better validation accuracy for {settings.patience} epochs")
                return


def train_epoch(loop: Loop, bar: EpochProgress | None = None) -> dict[str, Any]:
    """One pass over the training images in a fresh random order; the epoch's loss, accuracy and learning rate."""
    settings, data, counters = loop.settings, loop.data, loop.counters
    loop.model.train()
    order = torch.randperm(len(data), generator=loop.generator)
    total_loss = torch.zeros((), device=data.labels.device)
    correct = torch.zeros((), dtype=torch.int64, device=data.labels.device)
    for start in range(0, len(data), settings.batch_size):
        index = order[start : start + settings.batch_size].to(data.labels.device)
        images, labels = data.scaled(index), data.labels[index]
        if loop.augmentation.enabled:
            images = augment(images, loop.augmentation, loop.generator)
        learning_rate = settings.learning_rate * lr_factor(settings.lr_schedule, counters.step, loop.total_steps)
        for group in loop.optimizer.param_groups:
            group["lr"] = learning_rate
        logits = loop.model(data.normalise(images))
        loss = loop.loss_fn(logits, labels)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
        counters.step += 1
        total_loss += loss.detach() * len(labels)
        correct += (logits.detach().argmax(1) == labels).sum()
        if bar is not None:
            bar.advance(len(labels), total_loss, correct)
    return {
        "train_loss": float(total_loss) / len(data),
        "train_accuracy": float(correct) / len(data),
        "learning_rate": learning_rate,
    }


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at ``step``: a pure function, so resuming needs only the step."""
    progress = min(step / max(total_steps, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "onecycle":  # linear warm-up from 1/25 over the first 30%, then cosine down to 0
        warmup = 0.3
        if progress < warmup:
            return 0.04 + 0.96 * progress / warmup
        return 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))
    return 1.0


def _checkpoint(run_dir: Path, loop: Loop, info: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Save the best weights (by validation accuracy; without a validation split, the latest),
    the resume state and run.json."""
    counters = loop.counters
    val_accuracy = metrics.get("val_accuracy")
    if val_accuracy is None or val_accuracy > counters.best_val_accuracy:
        counters.best_val_accuracy = val_accuracy if val_accuracy is not None else -1.0
        counters.best_epoch = counters.epoch
        counters.epochs_without_improvement = 0
        checkpoint.save_weights(run_dir / checkpoint.BEST_WEIGHTS, loop.model)
    else:
        counters.epochs_without_improvement += 1
    generators = {"shuffle": loop.generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        generators["cuda"] = torch.cuda.get_rng_state()
    checkpoint.save_resume_state(run_dir, loop.model, loop.optimizer, generators, vars(counters))
    info.update(best_epoch=counters.best_epoch, wall_time_s=counters.wall_time_s)
    checkpoint.write_run_info(run_dir, info)


def _restore(run_dir: Path, loop: Loop, info: dict[str, Any]) -> Counters:
    generators, saved = checkpoint.load_resume_state(run_dir, loop.model, loop.optimizer)
    loop.generator.set_state(generators["shuffle"])
    torch.set_rng_state(generators["torch"])
    if "cuda" in generators and torch.cuda.is_available():
        torch.cuda.set_rng_state(generators["cuda"])
    counters = Counters(**saved)
    info["epochs"] = checkpoint.read_run_info(run_dir)["epochs"][: counters.epoch]
    return counters


def _finish(
    run_dir: Path, model: nn.Module, test_set: ImageSet, normalise: Normalisation, device: torch.device,
    counters: Counters, info: dict[str, Any],
) -> None:
    """Test the best weights; write the figures and the final run.json."""
    checkpoint.load_weights(model, run_dir / checkpoint.BEST_WEIGHTS)
    predicted, test_loss = predict(model, DeviceImages(test_set, normalise, device))
    confusion = confusion_matrix(test_set.labels, predicted, len(test_set.class_names))
    info.update(test_accuracy=float((predicted == test_set.labels).mean()), test_loss=test_loss, status="complete")
    plots.plot_curves(info["epochs"], run_dir / "curves.png")
    plots.plot_confusion(confusion, test_set.class_names, run_dir / "confusion.png")
    plots.plot_samples(test_set.images, test_set.labels, predicted, test_set.class_names, run_dir / "samples.png")
    checkpoint.write_run_info(run_dir, info)


def _run_info(
    settings: TrainSettings, train_set: ImageSet, val_set: ImageSet | None, test_set: ImageSet,
    normalise: Normalisation,
) -> dict[str, Any]:
    augmentation = settings.augmentation()
    return {
        "format": checkpoint.FORMAT,
        "status": "training",
        "architecture": settings.model,
        "model_options": settings.model_options,
        "dataset": {
            **settings.dataset_spec().to_json(),
            "data_dir": settings.data_dir and str(Path(settings.data_dir).resolve()),  # evaluate from anywhere
            "split": {
                "train": train_set.source, "train_images": len(train_set),
                "validation": val_set.source if val_set else None, "validation_images": len(val_set or []),
                "test": test_set.source, "test_images": len(test_set),
            },
        },
        "labels": train_set.class_names,
        "input": {"height": train_set.height, "width": train_set.width, "channels": train_set.channels,
                  "layout": "NCHW", "dtype": "float32"},
        "normalisation": normalise.to_json(),
        "hyperparameters": {
            "epochs": settings.epochs, "batch_size": settings.batch_size, "optimizer": settings.optimizer,
            "learning_rate": settings.learning_rate, "weight_decay": settings.weight_decay,
            "lr_schedule": settings.lr_schedule, "label_smoothing": settings.label_smoothing,
            "patience": settings.patience, "val_split": settings.val_split,
            "augmentation": vars(augmentation) | {"enabled": augmentation.enabled},
        },
        "settings": settings.to_json(),
        "seed": settings.seed,
        "torch": torch.__version__,
        "epochs": [],
        "best_epoch": 0,
        "test_accuracy": None,
        "wall_time_s": 0.0,
    }


def _model(settings: TrainSettings, train_set: ImageSet) -> nn.Module:
    return create_model(
        settings.model, in_channels=train_set.channels, num_classes=len(train_set.class_names),
        image_size=(train_set.height, train_set.width), **settings.model_options,
    )


def _optimizer(settings: TrainSettings, model: nn.Module) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings.learning_rate, momentum=0.9,
                               weight_decay=settings.weight_decay, nesterov=True)
    # fused: one kernel for all parameters instead of ~10 small ops each (about 10% of a fashion-cnn CPU step)
    return torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay,
                            fused=True)


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SettingsError("--device cuda was asked for but this torch has no usable CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _new_run_dir(settings: TrainSettings) -> Path:
    if settings.run_dir:
        run_dir = Path(settings.run_dir)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise SettingsError(f"{run_dir} already exists and is not empty: choose another run directory "
                                "or continue it with --resume")
        return run_dir
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(settings.output_dir) / f"{settings.model}-{settings.dataset}-{stamp}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir

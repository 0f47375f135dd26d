"""The training loop: data in memory, Adam and cross-entropy by default, best weights by validation accuracy.

``train(settings)`` runs a new training and returns its run directory; ``resume(run_dir)``
continues one from its last finished epoch, reproducing what one uninterrupted run would
have done. The run directory is created only when the first epoch ends, and every file in
it is written atomically, so a failed start leaves nothing behind.

Several processes (``nproc`` > 1, or a process started by ``torchrun``) train one model with
DDP: ``batch_size`` stays the global batch, each of N processes takes batch/N images of every
step from a DistributedSampler (one seeded order per epoch, the same for any N, so N processes
take the same steps as one), the epoch's figures are summed over all processes, and only rank 0
writes the run directory. One process runs the same code with a group of one.
"""

from __future__ import annotations

import dataclasses
import io
import math
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from edgecnn.train import checkpoint, distributed, plots
from edgecnn.train.augment import augment
from edgecnn.train.data import load_splits, split_validation
from edgecnn.train.distributed import Group
from edgecnn.train.evaluate import EVAL_BATCH, confusion_matrix, predict
from edgecnn.train.files import folder_problem
from edgecnn.train.imageset import DatasetError, ImageSet
from edgecnn.train.models import (
    ModelConfigError, check_options, count_parameters, create_model, default_learning_rate,
)
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


USER_ERRORS = (DatasetError, checkpoint.RunDirError, ModelConfigError, SettingsError)


def train(settings: TrainSettings, progress: bool = True, console: Console | None = None, nproc: int = 1) -> Path:
    """Train a new model as ``settings`` say on ``nproc`` processes; returns the run directory.

    ``nproc`` > 1 spawns the processes (as multiprocessing does: a calling script needs its
    ``if __name__ == "__main__":`` guard); in a process started by torchrun it joins torchrun's group."""
    target = settings.run_dir or settings.output_dir
    problem = folder_problem(target)  # before any data loads
    if problem:
        raise SettingsError(f"{'--run-dir' if settings.run_dir else '--output-dir'} {target}: {problem}")
    if _launching(nproc):
        _check(settings, nproc, launching=True)
        return _launch(nproc, settings, None, progress)
    return _run(settings, None, progress, console or Console(stderr=True, soft_wrap=True))


def resume(
    run_dir: str | Path, *, epochs: int | None = None, device: str | None = None, threads: int | None = None,
    progress: bool = True, console: Console | None = None, nproc: int = 1,
) -> Path:
    """Continue ``run_dir`` from its last finished epoch with its own settings; ``epochs`` may extend it.

    Any number of processes may continue a run: the global batch, and so every step, stays the same."""
    info = checkpoint.read_run_info(Path(run_dir))
    if "settings" not in info:
        raise checkpoint.RunDirError(f"{Path(run_dir) / checkpoint.RUN_JSON} lacks the settings needed to resume")
    settings = TrainSettings.from_json(info["settings"])
    settings.epochs = epochs or settings.epochs
    settings.device = device or settings.device
    settings.threads = threads or settings.threads
    if _launching(nproc):
        _check(settings, nproc, launching=True)
        return _launch(nproc, settings, Path(run_dir), progress)
    return _run(settings, Path(run_dir), progress, console or Console(stderr=True, soft_wrap=True))


# --- several processes ------------------------------------------------------------------------


def _launching(nproc: int) -> bool:
    """Whether to start ``nproc`` processes here: not inside torchrun, where this process joins its group."""
    if nproc < 1:
        raise SettingsError(f"--nproc must be at least 1, got {nproc}")
    if distributed.under_torchrun():
        world_size = distributed.env_world_size()
        if nproc not in (1, world_size):
            raise SettingsError(f"this process runs under torchrun with WORLD_SIZE={world_size}: "
                                f"drop --nproc {nproc} (torchrun's --nproc-per-node sets the number)")
        return False
    return nproc > 1


def _check(settings: TrainSettings, world_size: int, launching: bool = False) -> None:
    """The errors every process would find, found before any starts (or joins its group)."""
    settings.check()
    check_options(settings.model, settings.model_options)  # fail before loading any data
    if settings.batch_size % world_size:
        nearest = settings.batch_size // world_size * world_size or world_size
        raise SettingsError(f"--batch-size {settings.batch_size} is the global batch and must divide evenly "
                            f"among {world_size} processes (try {nearest})")
    if launching and _device(settings.device).type == "cuda" and torch.cuda.device_count() < world_size:
        raise SettingsError(f"--nproc {world_size} on CUDA needs one GPU per process and this machine has "
                            f"{torch.cuda.device_count()}: use fewer processes or --device cpu")


def _launch(nproc: int, settings: TrainSettings, resume_dir: Path | None, progress: bool) -> Path:
    """Train on ``nproc`` local processes started by torch's elastic launcher (torchrun's); rank 0's run directory."""
    try:
        results = distributed.launch(nproc, _worker, settings.to_json(), resume_dir and str(resume_dir), progress)
    except distributed.LaunchError as exc:
        same = {error.__name__: error for error in USER_ERRORS}.get(exc.error_type or "")
        if same is not None:  # a worker's bad input: the error one process would have raised
            raise same(str(exc)) from None
        raise
    return Path(results[0])


def _worker(settings_json: dict[str, Any], resume_dir: str | None, progress: bool) -> str:
    """One launched process: train as one rank; a bad-input error goes to the launcher as its one sentence."""
    settings = TrainSettings.from_json(settings_json)
    try:
        return str(_run(settings, resume_dir and Path(resume_dir), progress, Console(stderr=True, soft_wrap=True)))
    except USER_ERRORS as exc:
        distributed.record_error(exc)
        sys.exit(1)


@dataclass
class Loop:
    """Everything a training epoch works with."""

    settings: TrainSettings
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    data: DeviceImages
    augmentation: Augmentation
    generator: torch.Generator  # augmentation draws (this process's own)
    counters: Counters
    total_steps: int
    sampler: DistributedSampler  # this process's share of each epoch's seeded order
    group: Group = dataclasses.field(default_factory=Group.single)
    network: nn.Module | None = None  # what the steps call: the model, or DDP around it

    @property
    def local_batch(self) -> int:
        return self.settings.batch_size // self.group.world_size


def build_loop(
    settings: TrainSettings, train_set: ImageSet, normalise: Normalisation, device: torch.device,
    group: Group | None = None,
) -> Loop:
    """A fresh model and optimizer for ``train_set``, seeded by ``settings.seed`` (the same on every process)."""
    group = group or Group.single()
    if settings.learning_rate is None:
        settings = dataclasses.replace(settings, learning_rate=default_learning_rate(settings.model))
    torch.manual_seed(settings.seed)
    model = _model(settings, train_set).to(device)
    if group.backend == "nccl":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state-dict keys as BatchNorm
    # Each process draws its own dropout masks and augmentations; rank 0 draws what one process would.
    rank_seed = settings.seed + (group.rank << 32)
    if group.rank:
        torch.manual_seed(rank_seed)
    network: nn.Module = model
    if group.distributed:
        # The images are channels_last, so a 1-channel first convolution's weight gradient comes back with
        # strides that differ from DDP's bucket view (same values; DDP copies them): not worth a warning per run.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = DistributedSampler(range(len(train_set)), num_replicas=group.world_size, rank=group.rank,
                                 shuffle=True, seed=settings.seed)
    return Loop(
        settings=settings,
        model=model,
        optimizer=_optimizer(settings, model),
        loss_fn=nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing),
        data=DeviceImages(train_set, normalise, device),
        augmentation=settings.augmentation(),
        generator=torch.Generator().manual_seed(rank_seed),
        counters=Counters(),
        total_steps=math.ceil(len(sampler) / (settings.batch_size // group.world_size)) * settings.epochs,
        sampler=sampler,
        group=group,
        network=network,
    )


def _run(settings: TrainSettings, resume_dir: Path | None, progress: bool, console: Console) -> Path:
    world_size = distributed.env_world_size()
    _check(settings, world_size)
    device = _device(settings.device)
    group = Group.join(device.type) if world_size > 1 else Group.single()
    try:
        return _run_in_group(settings, resume_dir, progress, console, device, group)
    finally:
        group.leave()


def _run_in_group(
    settings: TrainSettings, resume_dir: Path | None, progress: bool, console: Console, device: torch.device,
    group: Group,
) -> Path:
    if device.type == "cuda" and group.distributed:
        device = torch.device("cuda", group.local_rank)
    if not group.is_main:  # progress and logs come from rank 0 only
        console, progress = Console(file=io.StringIO()), False
    # N processes share the cores: each gets its part, so they do not oversubscribe them.
    torch.set_num_threads(settings.threads or max(1, distributed.usable_cores() // group.world_size))
    with group.rank_zero_first():  # rank 0 downloads missing files; the others then read them
        train_set, test_set = load_splits(settings.dataset_spec(), log=console.print)
    train_set, val_set = split_validation(train_set, settings.val_split, settings.seed)
    console.print(_split_line(train_set, val_set, test_set, settings.val_split))
    normalise = Normalisation.of_images(train_set.images)
    loop = build_loop(settings, train_set, normalise, device, group)
    settings = loop.settings  # with the learning rate filled in
    val_data = DeviceImages(val_set, normalise, device) if val_set else None
    run_dir = resume_dir or group.from_rank_zero(lambda: _new_run_dir(settings))
    info = _run_info(settings, train_set, val_set, test_set, normalise, group)
    if resume_dir is not None:
        loop.counters = _restore(resume_dir, loop, info)
        console.print(f"resuming {resume_dir} after epoch {loop.counters.epoch}")

    where = f"device {device}"
    if group.distributed:
        where = (f"{group.world_size} processes ({group.backend}, {device.type}, "
                 f"{settings.batch_size // group.world_size} images per process of each batch of "
                 f"{settings.batch_size}, {torch.get_num_threads()} threads each)")
    console.print(f"training {settings.model} ({count_parameters(loop.model):,} parameters) "
                  f"on {len(train_set):,} {train_set.name} images, {where}, run directory {run_dir}")
    note = _batch_norm_note(loop.model, group, settings)
    if note:
        console.print(note)
    try:
        _epochs(loop, val_data, run_dir, info, EpochProgress(console, enabled=progress, world_size=group.world_size))
    except KeyboardInterrupt:
        if group.is_main and (run_dir / checkpoint.RESUME_STATE).exists():
            console.print(f"interrupted: continue with `edgecnn train --resume {run_dir}`")
        raise
    if group.is_main:
        _finish(run_dir, loop.model, test_set, normalise, device, loop.counters, info)
        console.print(f"test accuracy {info['test_accuracy']:.4f} on {len(test_set):,} images "
                      f"(best epoch {info['best_epoch']}), {loop.counters.wall_time_s:.1f} s; run directory {run_dir}")
    group.barrier()  # every process ends with the run directory complete
    return run_dir


def _split_line(train_set: ImageSet, val_set: ImageSet | None, test_set: ImageSet, val_split: float) -> str:
    """The three splits' image counts in one line."""
    validation = f"{len(val_set):,} to validate ({val_split:.0%} of each class, --val-split)" if val_set else (
        "none to validate (--val-split 0: the last epoch is kept)")
    return (f"split: {len(train_set) + len(val_set or []) + len(test_set):,} images, {len(train_set):,} to train, "
            f"{validation}, {len(test_set):,} to test")


def _batch_norm_note(model: nn.Module, group: Group, settings: TrainSettings) -> str | None:
    """One line on what BatchNorm does across processes, for models that have it."""
    kinds = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)
    if not group.distributed or not any(isinstance(m, kinds) for m in model.modules()):
        return None
    if group.backend == "nccl":
        return (f"BatchNorm: SyncBatchNorm across the {group.world_size} processes (statistics of the whole "
                f"batch of {settings.batch_size})")
    return (f"BatchNorm: each of the {group.world_size} processes normalises with the statistics of its own "
            f"{settings.batch_size // group.world_size} images (SyncBatchNorm needs CUDA/NCCL); the running "
            "statistics saved are rank 0's")


def _epochs(
    loop: Loop, val_data: DeviceImages | None, run_dir: Path, info: dict[str, Any], bar: EpochProgress
) -> None:
    """Train, validate and checkpoint epoch after epoch until the last one or early stopping."""
    settings, counters = loop.settings, loop.counters
    with bar:
        while counters.epoch < settings.epochs:
            started = time.perf_counter()
            bar.start_epoch(counters.epoch + 1, settings.epochs, len(loop.sampler) * loop.group.world_size)
            metrics = train_epoch(loop, bar)
            if val_data is not None:
                metrics["val_loss"], metrics["val_accuracy"] = validate(loop.model, val_data, loop.group)
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
    """One pass over the training images in this epoch's seeded order (this process's share of it);
    the epoch's loss and accuracy over all processes, and the learning rate."""
    settings, data, counters = loop.settings, loop.data, loop.counters
    network = loop.network or loop.model
    network.train()
    loop.sampler.set_epoch(counters.epoch)
    order = torch.tensor(list(loop.sampler), dtype=torch.int64)
    total_loss = torch.zeros((), device=data.labels.device)
    correct = torch.zeros((), dtype=torch.int64, device=data.labels.device)
    for start in range(0, len(order), loop.local_batch):
        index = order[start : start + loop.local_batch].to(data.labels.device)
        images, labels = data.scaled(index), data.labels[index]
        if loop.augmentation.enabled:
            images = augment(images, loop.augmentation, loop.generator)
        learning_rate = settings.learning_rate * lr_factor(settings.lr_schedule, counters.step, loop.total_steps)
        for group in loop.optimizer.param_groups:
            group["lr"] = learning_rate
        logits = network(data.normalise(images))
        loss = loop.loss_fn(logits, labels)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
        counters.step += 1
        total_loss += loss.detach() * len(labels)
        correct += (logits.detach().argmax(1) == labels).sum()
        if bar is not None:
            bar.advance(len(labels), total_loss, correct)
    total, right, seen = loop.group.sum([float(total_loss), float(correct), len(order)], data.labels.device)
    return {"train_loss": total / seen, "train_accuracy": right / seen, "learning_rate": learning_rate}


@torch.no_grad()
def validate(model: nn.Module, data: DeviceImages, group: Group) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on ``data``; each process scores every N-th image, the sums are shared."""
    group.broadcast_buffers(model)  # BatchNorm running statistics: rank 0's, the ones its checkpoint saves
    model.eval()
    shard = torch.arange(group.rank, len(data), group.world_size, device=data.labels.device)
    total_loss, correct = 0.0, 0
    for start in range(0, len(shard), EVAL_BATCH):
        index = shard[start : start + EVAL_BATCH]
        logits = model(data.normalise.model_input(data.images[index]))
        labels = data.labels[index]
        total_loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
    total_loss, correct, count = group.sum([total_loss, correct, len(shard)], data.labels.device)
    return total_loss / max(count, 1), correct / max(count, 1)


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
    the resume state and run.json: rank 0 writes, every process keeps the same counters (the metrics
    are global, so all of them stop early together)."""
    counters = loop.counters
    val_accuracy = metrics.get("val_accuracy")
    best = val_accuracy is None or val_accuracy > counters.best_val_accuracy
    if best:
        counters.best_val_accuracy = val_accuracy if val_accuracy is not None else -1.0
        counters.best_epoch = counters.epoch
        counters.epochs_without_improvement = 0
    else:
        counters.epochs_without_improvement += 1
    own = {"shuffle": loop.generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        own["cuda"] = torch.cuda.get_rng_state()
    everyone = loop.group.gather(own)  # every process's random state, so a resumed run draws on
    if not loop.group.is_main:
        return
    if best:
        checkpoint.save_weights(run_dir / checkpoint.BEST_WEIGHTS, loop.model)
    generators = {_rng_key(name, rank): state for rank, states in enumerate(everyone) for name, state in states.items()}
    checkpoint.save_resume_state(run_dir, loop.model, loop.optimizer, generators, vars(counters))
    info.update(best_epoch=counters.best_epoch, wall_time_s=counters.wall_time_s)
    checkpoint.write_run_info(run_dir, info)


def _rng_key(name: str, rank: int) -> str:
    """Rank 0's generators keep the names one process has always used; rank r's get a ``.r`` suffix."""
    return name if rank == 0 else f"{name}.{rank}"


def _restore(run_dir: Path, loop: Loop, info: dict[str, Any]) -> Counters:
    """Every process loads the same resume file (rank 0's) and takes its own random state from it."""
    generators, saved = checkpoint.load_resume_state(run_dir, loop.model, loop.optimizer)
    rank = loop.group.rank
    if _rng_key("shuffle", rank) in generators:
        loop.generator.set_state(generators[_rng_key("shuffle", rank)])
        torch.set_rng_state(generators[_rng_key("torch", rank)])
        if _rng_key("cuda", rank) in generators and torch.cuda.is_available():
            torch.cuda.set_rng_state(generators[_rng_key("cuda", rank)])
    # else: more processes than the run had; this one keeps its fresh seeded draws
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
    normalise: Normalisation, group: Group | None = None,
) -> dict[str, Any]:
    augmentation = settings.augmentation()
    group = group or Group.single()
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
        "world_size": group.world_size,  # processes (DDP ranks) of the latest session; batch_size is global
        "distributed_backend": group.backend,
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

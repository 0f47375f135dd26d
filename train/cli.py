"""`edgecnn train` and `edgecnn evaluate`.

Torch-free at import: torch loads inside the commands, so `edgecnn --help` stays instant.
Option defaults come from TrainSettings, the one place they are defined.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Literal, Optional

import typer
from rich.console import Console
from rich.table import Table

from edgecnn.serve.images import FORMATS_TEXT
from edgecnn.train import folder
from edgecnn.train.data import DATASETS, DatasetError, DatasetSpec
from edgecnn.train.files import folder_to_read_problem
from edgecnn.train.settings import DEVICES, LR_SCHEDULES, OPTIMIZERS, SettingsError, TrainSettings
from edgecnn.train.commandline import needs_extra, parse_image_size

# Flags that take one of a few values are Literal types: `--help` lists them, anything else is refused with the list.
DatasetName = Literal[DATASETS]
Padding = Literal["valid", "same", "full"]
Pool = Literal["max", "avg"]
OptimizerName = Literal[OPTIMIZERS]
LrSchedule = Literal[LR_SCHEDULES]
TrainDevice = Literal[DEVICES]
EvalDevice = Literal["cpu", "cuda"]

DEFAULTS = TrainSettings()
RESUMABLE_OPTIONS = {"resume", "epochs", "device", "threads", "progress", "nproc"}  # what --resume lets you change
stderr = Console(stderr=True, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add this part's commands to the root `edgecnn` app."""
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)


def _fail(message: str) -> typer.Exit:
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that mean bad input, shown as one line; anything else is a bug and keeps its traceback."""
    from edgecnn.train.checkpoint import RunDirError
    from edgecnn.train.distributed import LaunchError
    from edgecnn.train.models import ModelConfigError

    return DatasetError, RunDirError, ModelConfigError, SettingsError, LaunchError


@contextlib.contextmanager
def catching_user_errors():
    """Bad input (a run dir, a dataset, a setting) ends the command in one line."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            raise _fail(str(exc)) from None
        raise


def _dataset_for(dataset: str, data_dir: Optional[str], given: set[str]) -> str:
    """``--dataset`` as given; left at its default, ``folder`` when ``--data-dir`` is laid out as an image
    folder (class sub-folders of images), said in one line, so nothing is downloaded into the user's images."""
    if "dataset" in given or data_dir is None or not folder.is_image_folder(Path(data_dir)):
        return dataset
    stderr.print(f"--data-dir {data_dir} holds one sub-folder of images per class: training on it as "
                 "--dataset folder", highlight=False)
    return "folder"


def _check_data_dir(dataset: str, data_dir: Optional[str]) -> None:
    """``--data-dir`` must be a folder to read; for a public dataset it may also not exist yet (it is downloaded there)."""
    if data_dir is None or (dataset != "folder" and not Path(data_dir).exists()):
        return
    problem = folder_to_read_problem(data_dir)
    if problem:
        raise _fail(f"--data-dir {data_dir}: {problem}")


def _check_run_dir(flag: str, run_dir: str | Path) -> None:
    """The run directory ``flag`` names must be a folder holding run.json (what is inside is checked when read)."""
    from edgecnn.train.checkpoint import RUN_JSON

    problem = folder_to_read_problem(run_dir)
    if problem is None and not (Path(run_dir) / RUN_JSON).is_file():
        problem = f"not a run directory (no {RUN_JSON} in it)"
    if problem:
        raise _fail(f"{flag} {run_dir}: {problem}")


def _image_size(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    message = f"{text!r} is not HEIGHTxWIDTH (e.g. 64x64) or one number"
    try:
        size = parse_image_size(text)
    except ValueError:
        raise typer.BadParameter(message) from None
    if min(size) < 1:
        raise typer.BadParameter(message)
    return size


def _model_options(
    padding: Optional[str], stride: Optional[int], pool: Optional[str], pairs: list[str]
) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--option")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value
    chosen = {"padding": padding, "stride": stride, "pool": pool}
    options.update({k: v for k, v in chosen.items() if v is not None})
    return options


def train_command(
    ctx: typer.Context,
    dataset: DatasetName = typer.Option(DEFAULTS.dataset, help=f"Dataset: {', '.join(DATASETS)}."),
    data_dir: Optional[str] = typer.Option(
        DEFAULTS.data_dir, help="Folder with the dataset files (a public set is downloaded there when missing). "
        f"--dataset folder: one sub-folder of {FORMATS_TEXT} images per class, or train/ and test/ holding such; "
        "a folder laid out so trains as --dataset folder when --dataset is not given. Without it, mnist uses "
        "the embedded MNIST set and the others a cache folder under ~/.cache/edgecnn."),
    image_size: Optional[str] = typer.Option(
        None, help="folder dataset: resize images to HEIGHTxWIDTH (default: the size of the first image)."),
    channels: Optional[int] = typer.Option(
        DEFAULTS.channels, help="folder dataset: 1 for grayscale, 3 for RGB (default: as the first image)."),
    download: bool = typer.Option(DEFAULTS.download, help="Download missing public dataset files (MD5-checked)."),
    mirror: Optional[str] = typer.Option(DEFAULTS.mirror, help="Base URL to download dataset files from instead."),
    val_split: float = typer.Option(
        DEFAULTS.val_split, help="Share of the training images held out (per class, under --seed) to pick the "
        "best epoch and stop early; 0 keeps the last epoch."),
    model: str = typer.Option(DEFAULTS.model, help="Model architecture by name (an unknown name lists them all)."),
    padding: Optional[Padding] = typer.Option(None, help="Seed CNNs: convolution padding, valid, same or full."),
    stride: Optional[int] = typer.Option(None, help="Seed CNNs: convolution stride."),
    pool: Optional[Pool] = typer.Option(None, help="Seed CNNs: pooling, max or avg."),
    option: list[str] = typer.Option([], help="Other model option as KEY=VALUE, e.g. width=48 (repeatable)."),
    epochs: int = typer.Option(DEFAULTS.epochs, help="Passes over the training images."),
    batch_size: int = typer.Option(DEFAULTS.batch_size, help="Images per optimizer step."),
    optimizer: OptimizerName = typer.Option(DEFAULTS.optimizer, help=f"Optimizer: {', '.join(OPTIMIZERS)}."),
    lr: Optional[float] = typer.Option(
        DEFAULTS.learning_rate, help="Base learning rate (default: the model's own, 1e-3 for the seed CNNs as in "
        "the seeds, 2e-3 for resnet-small)."),
    weight_decay: float = typer.Option(DEFAULTS.weight_decay, help="L2 weight decay."),
    lr_schedule: LrSchedule = typer.Option(
        DEFAULTS.lr_schedule, help=f"Learning-rate schedule over the run: {', '.join(LR_SCHEDULES)}."),
    label_smoothing: float = typer.Option(DEFAULTS.label_smoothing, help="Cross-entropy label smoothing."),
    patience: int = typer.Option(
        DEFAULTS.patience, help="Stop after this many epochs without a better validation accuracy; 0 never stops."),
    rotation: float = typer.Option(DEFAULTS.rotation, help="Augmentation: random rotation up to this many degrees."),
    shift: float = typer.Option(
        DEFAULTS.shift, help="Augmentation: random width/height shift up to this fraction of the image."),
    hflip: Optional[bool] = typer.Option(
        DEFAULTS.hflip, "--hflip/--no-hflip",
        help="Augmentation: random horizontal flips (default: on for fashion-mnist and cifar10, off for digits "
        "and folders)."),
    seed: int = typer.Option(DEFAULTS.seed, help="Random seed: same seed, same data split and same weights."),
    device: TrainDevice = typer.Option(DEFAULTS.device, help=f"Where to train: {', '.join(DEVICES)}."),
    threads: Optional[int] = typer.Option(
        DEFAULTS.threads, help="CPU threads for torch per process (default: the usable cores shared among --nproc)."),
    nproc: int = typer.Option(
        1, help="Train on this many local processes (DDP: gloo on CPU, NCCL on CUDA), started by torchrun's "
        "launcher; --batch-size stays the global batch and must divide by it. Under torchrun the processes "
        "it started join its group instead."),
    output_dir: str = typer.Option(DEFAULTS.output_dir, help="Parent folder of new run directories."),
    run_dir: Optional[str] = typer.Option(
        DEFAULTS.run_dir, help="Run directory to create (default: OUTPUT_DIR/MODEL-DATASET-TIME)."),
    resume: Optional[str] = typer.Option(
        None, help="Continue this run directory from its last epoch with its own settings (only --epochs, "
        "--device, --threads and --nproc may change; more --epochs stretch the learning-rate schedule)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Train an image classifier; writes a run directory with weights, run.json and plots."""
    given = {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
    if not resume:
        dataset = _dataset_for(dataset, data_dir, given)
        _check_data_dir(dataset, data_dir)
    settings = TrainSettings(
        dataset=dataset, data_dir=data_dir, image_size=_image_size(image_size), channels=channels,
        download=download, mirror=mirror, val_split=val_split, model=model,
        model_options=_model_options(padding, stride, pool, option), epochs=epochs, batch_size=batch_size,
        optimizer=optimizer, learning_rate=lr, weight_decay=weight_decay, lr_schedule=lr_schedule,
        label_smoothing=label_smoothing, patience=patience, rotation=rotation, shift=shift, hflip=hflip,
        seed=seed, device=device, threads=threads, output_dir=output_dir, run_dir=run_dir,
    )
    with needs_extra("train", "train"), catching_user_errors():
        from edgecnn.train import trainer

        if resume:
            fixed = sorted(given - RESUMABLE_OPTIONS)
            if fixed:
                option = "--" + fixed[0].replace("_", "-")
                raise SettingsError(f"--resume continues a run with its own settings; drop {option}")
            _check_run_dir("--resume", resume)
            trainer.resume(resume, epochs=epochs if "epochs" in given else None,
                           device=device if "device" in given else None, threads=threads,
                           progress=progress, console=stderr, nproc=nproc)
        else:
            trainer.train(settings, progress=progress, console=stderr, nproc=nproc)


def evaluate_command(
    run_dir: Path = typer.Argument(..., help="Run directory written by `edgecnn train`."),
    dataset: Optional[DatasetName] = typer.Option(None, help="Evaluate on this dataset instead of the run's own."),
    data_dir: Optional[str] = typer.Option(None, help="Folder with the dataset files (default: the run's own)."),
    download: bool = typer.Option(True, help="Download missing public dataset files (MD5-checked)."),
    device: EvalDevice = typer.Option("cpu", help="Where to run the model: cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON instead of tables."),
) -> None:
    """Accuracy, per-class accuracy and confusion matrix of a run's best weights on a test split."""
    with needs_extra("train", "evaluate"), catching_user_errors():
        from edgecnn.train.checkpoint import read_run_info
        from edgecnn.train.evaluate import evaluate_run

        _check_run_dir("RUN_DIR", run_dir)
        spec = None
        if dataset or data_dir:
            own = read_run_info(run_dir).get("dataset", {})
            _check_data_dir(dataset or own.get("name", "mnist"), data_dir)
            spec = DatasetSpec.from_json({**own, "name": dataset or own.get("name", "mnist"), "data_dir": data_dir,
                                          "download": download})
        result = evaluate_run(run_dir, spec, device=device)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        _print_evaluation(result)


def _print_evaluation(result: dict[str, Any]) -> None:
    console = Console()
    console.print(f"[bold]accuracy {result['accuracy']:.4f}[/] on {result['count']:,} images ({result['source']})")
    per_class = Table("class", "accuracy", "images", title="per-class accuracy")
    for label, row in zip(result["labels"], result["confusion_matrix"]):
        per_class.add_row(label, f"{result['per_class_accuracy'][label]:.4f}", str(sum(row)))
    console.print(per_class)
    confusion = Table("true \\ predicted", *result["labels"], title="confusion matrix")
    for i, (label, row) in enumerate(zip(result["labels"], result["confusion_matrix"])):
        confusion.add_row(label, *(f"[bold]{n}[/]" if i == j else str(n) for j, n in enumerate(row)))
    console.print(confusion)

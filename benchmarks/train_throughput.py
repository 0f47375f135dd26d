"""Training throughput of `fashion-cnn`: our trainer against the seed's Keras tutorial code, side by side.

Both train the same model (Conv32-Pool-Conv64-Pool-Flatten-Dense128-Dropout0.3-Dense10, Adam,
batch 64) on the same images (the embedded MNIST split: the first 8,000 t10k images) on the
same machine. One timed call is one full training epoch, shuffling included; the two sides
alternate (A B A B ...) so that a noisy neighbour hits both alike, and we quote medians.

Keras is not a project dependency: it runs in a throwaway environment, in a subprocess that
runs this same file in worker mode (numpy and tensorflow only), so both stay warm:

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu numpy
    .venv/bin/python benchmarks/train_throughput.py --keras-python /tmp/tfenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH_SIZE = 64


# --- the Keras side: runs in the tensorflow environment ----------------------------------


def keras_worker(data_path: str, threads: int, epochs: int) -> None:
    """The seed's Keras model in one ``fit`` call, as the tutorial trains it; each epoch waits for an
    "epoch" line on stdin and answers "done", so the parent can alternate and time it."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from tensorflow import keras
    from tensorflow.keras import layers

    with np.load(data_path) as data:
        images = data["images"].astype("float32") / 255.0  # the tutorial's rescale
        labels = data["labels"]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input(shape=images.shape[1:]),
        layers.Conv2D(32, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.3),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    class TakeTurns(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
            if not sys.stdin.readline():  # the parent is gone or done
                os._exit(0)
            self.cpu_started = time.process_time()

        def on_epoch_end(self, epoch: int, logs: object = None) -> None:
            print(f"done {time.process_time() - self.cpu_started}", flush=True)

    print(json.dumps({"ready": True, "tensorflow": tf.__version__, "parameters": model.count_params()}), flush=True)
    model.fit(images, labels, batch_size=BATCH_SIZE, epochs=epochs, shuffle=True, verbose=0, callbacks=[TakeTurns()])


class KerasProcess:
    """The Keras worker subprocess; calling it trains one epoch. ``cpu_seconds``: its CPU time per epoch."""

    def __init__(self, python: str, data_path: str, threads: int, epochs: int) -> None:
        self.process = subprocess.Popen(
            [python, __file__, "--keras-worker", data_path, "--threads", str(threads), "--epochs", str(epochs)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        self.info = json.loads(self._read_line())
        self.cpu_seconds: list[float] = []

    def _read_line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the Keras worker exited (code {self.process.wait()}); see its messages above")
        return line

    def __call__(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("epoch\n")
        self.process.stdin.flush()
        answer, _, cpu = self._read_line().partition(" ")
        if answer != "done":
            raise RuntimeError(f"the Keras worker answered {answer!r}, not 'done'")
        self.cpu_seconds.append(float(cpu))

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()  # a worker waiting for its turn reads end-of-file and exits
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- our side: the real training loop of edgecnn ------------------------------------------


class OursEpoch:
    """One epoch of edgecnn's own training loop per call. ``cpu_seconds``: this process's CPU time per epoch."""

    def __init__(self, loop: object) -> None:
        self.loop = loop
        self.cpu_seconds: list[float] = []

    def __call__(self) -> None:
        from edgecnn.train.trainer import train_epoch

        started = time.process_time()
        train_epoch(self.loop)
        self.cpu_seconds.append(time.process_time() - started)


def ours(threads: int):
    """(one-epoch callable, the training images) for fashion-cnn in edgecnn's own loop."""
    import torch

    from edgecnn.train.data import DatasetSpec, load_splits
    from edgecnn.train.normalisation import Normalisation
    from edgecnn.train.settings import TrainSettings
    from edgecnn.train.trainer import build_loop

    torch.set_num_threads(threads)
    train_set, _ = load_splits(DatasetSpec())
    settings = TrainSettings(model="fashion-cnn", batch_size=BATCH_SIZE, val_split=0.0, device="cpu")
    loop = build_loop(settings, train_set, Normalisation.of_images(train_set.images), torch.device("cpu"))
    return OursEpoch(loop), train_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keras-python", help="Python of an environment with tensorflow-cpu (/tmp/tfenv/bin/python)")
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs per side, alternating (default 5)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPU threads for both sides")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--keras-worker", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keras_worker:
        keras_worker(args.keras_worker, args.threads, args.epochs)
        return
    if not args.keras_python:
        parser.error("--keras-python is required (see the module docstring for the one-line set-up)")

    from edgecnn.benchmarks.timing import interleaved

    ours_epoch, train_set = ours(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        data_path = str(Path(scratch) / "train.npz")
        np.savez(data_path, images=train_set.images, labels=train_set.labels)
        warmup = 1
        keras = KerasProcess(args.keras_python, data_path, args.threads, epochs=warmup + args.rounds)
        try:
            load_before = os.getloadavg()[0]
            seconds = interleaved({"edgecnn": ours_epoch, "keras": keras}, rounds=args.rounds, warmup=warmup,
                                  min_calls=1, min_seconds=0.0)
            load_after = os.getloadavg()[0]
        finally:
            keras.close()

    import torch

    rate = {name: len(train_set) / float(np.median(s)) for name, s in seconds.items()}
    result = {
        "images_per_epoch": len(train_set),
        "batch_size": BATCH_SIZE,
        "threads": args.threads,
        "rounds": args.rounds,
        "edgecnn_images_per_s": rate["edgecnn"],
        "keras_images_per_s": rate["keras"],
        "ratio": rate["edgecnn"] / rate["keras"],
        "epoch_seconds": {name: [round(float(x), 3) for x in s] for name, s in seconds.items()},
        # CPU time is what contention cannot inflate much: a check on the wall-clock figures of a busy machine
        "epoch_cpu_seconds": {
            "edgecnn": [round(x, 3) for x in ours_epoch.cpu_seconds[warmup:]],
            "keras": [round(x, 3) for x in keras.cpu_seconds[warmup:]],
        },
        "torch": torch.__version__,
        "tensorflow": keras.info["tensorflow"],
        "keras_parameters": keras.info["parameters"],
        "cpu": platform.processor() or platform.machine(),
        "load_average_before_after": [load_before, load_after],
    }
    print(f"fashion-cnn training, batch {BATCH_SIZE}, {len(train_set):,} images per epoch, {args.threads} threads, "
          f"median of {args.rounds} alternating epochs")
    print(f"  edgecnn (torch {result['torch']}):     {rate['edgecnn']:8,.0f} images/s")
    print(f"  Keras seed (tensorflow {result['tensorflow']}): {rate['keras']:8,.0f} images/s")
    print(f"  ratio edgecnn / Keras: {result['ratio']:.2f}   (load average {load_before:.1f} -> {load_after:.1f})")
    cpu = {name: float(np.median(values)) for name, values in result["epoch_cpu_seconds"].items()}
    print(f"  CPU seconds per epoch (median): edgecnn {cpu['edgecnn']:.2f}, Keras {cpu['keras']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

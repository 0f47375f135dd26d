"""Every mistake a user can make on the command line ends in one sentence naming the file, address or flag,
with a non-zero exit code, never in a traceback.

One table per way of running: the in-process commands through typer's CliRunner (an uncaught exception
there is ``result.exception``, not a SystemExit), `edgecnn serve` as a subprocess (it sets up signals and
logging). The files are tiny and made once per module; the one run directory trains for one epoch on 10
images of 28x28.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edgecnn.serve.cli import app
from PIL import Image
from typer.testing import CliRunner

from tests.helpers.models import write_tiny_model

ENV = {"COLUMNS": "250"}  # typer's error panel wraps long sentences at the terminal's width


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A folder of good and bad inputs; the test cases name them relative to it."""
    root = tmp_path_factory.mktemp("inputs")
    write_tiny_model(root / "tiny.onnx")
    good = (root / "tiny.onnx").read_bytes()
    (root / "truncated.onnx").write_bytes(good[: len(good) // 4])
    (root / "text.onnx").write_text("not a model")
    (root / "empty.txt").write_text("")
    (root / "binary.txt").write_bytes(b"\x00\x01\xff\xfe")
    (root / "two-labels.txt").write_text("a\nb\n")
    (root / "folder").mkdir()
    (root / "not-an-image.png").write_text("text")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "photo.png")
    png = (root / "photo.png").read_bytes()
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "list.json").write_text("[]")
    for folder, classes, count in (("data", "ab", 6), ("one-class", "a", 4)):
        for name in classes:
            (root / folder / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
                Image.fromarray(pixels).save(root / folder / name / f"{i}.png")
    (root / "calibration-not-images").mkdir()
    for i in range(6):
        (root / "calibration-not-images" / f"{i}.png").write_text("not an image")
    (root / "images-with-a-bad-one").mkdir()
    shutil.copy(root / "not-an-image.png", root / "images-with-a-bad-one")
    return root


@pytest.fixture(scope="module")
def runs(files) -> Path:
    """A real run directory (one epoch on 10 images), and broken copies of it."""
    pytest.importorskip("torch")
    result = CliRunner().invoke(app, ["train", "--dataset", "folder", "--data-dir", str(files / "data"),
                                      "--model", "mnist-cnn", "--epochs", "1", "--val-split", "0", "--no-progress",
                                      "--run-dir", str(files / "run")])
    assert result.exit_code == 0, result.output
    for name in ("no-weights", "truncated-weights", "bad-json", "no-resume"):
        shutil.copytree(files / "run", files / name)
    (files / "no-weights" / "model.safetensors").unlink()
    weights = (files / "run" / "model.safetensors").read_bytes()
    (files / "truncated-weights" / "model.safetensors").write_bytes(weights[:100])
    (files / "bad-json" / "run.json").write_text("{truncated")
    (files / "no-resume" / "resume.safetensors").unlink()
    return files


@pytest.fixture(scope="module")
def server(files):
    from edgecnn.serve.server import start_server

    from tests.helpers.serving import settings_for

    running = start_server(settings_for(files / "tiny.onnx"))
    yield running.address
    running.stop(grace=0)


def expand(args: list[str], root: Path, server: str = "") -> list[str]:
    """``@name`` is a file of the fixture folder; ``SERVER`` the running server's address."""
    return [str(root / a[1:]) if a.startswith("@") else a.replace("SERVER", server) for a in args]


def check(result, code: int, says: list[str]) -> None:
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}\n{result.output}"
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for text in says:
        assert text in result.output, result.output


def invoke(args: list[str], cwd: Path):
    old = Path.cwd()
    os.chdir(cwd)  # whatever a command would write by default (runs/, bench-results/) stays in the temp folder
    try:
        return CliRunner().invoke(app, args, env=ENV)
    finally:
        os.chdir(old)


# (command line, exit code, what the one sentence must say). "@x" is the fixture file x.
NO_SERVER = [
    # predict
    (["predict", "@not-an-image.png", "--server", "127.0.0.1:1"], 1, ["not-an-image.png: not a PNG or JPEG image"]),
    (["predict", "@truncated.png", "--server", "127.0.0.1:1"], 1, ["truncated.png: not a decodable image"]),
    (["predict", "@folder"], 1, ["folder: a folder, not an image file"]),
    (["predict", "@missing.png"], 1, ["missing.png: no such file"]),
    (["predict", "@photo.png", "--server", "127.0.0.1:1"], 1, ["127.0.0.1:1: UNAVAILABLE"]),
    (["predict", "@photo.png", "--server", ""], 1, ["'' is not a server address"]),
    (["predict", "@photo.png", "--server", "no-port,other"], 1, ["'no-port' is not HOST:PORT"]),
    (["predict", "@photo.png", "--timeout", "0"], 2, ["--timeout"]),
    (["predict", "@photo.png", "--token-file", "@empty.txt"], 1, ["--token-file", "empty.txt: no token in the file"]),
    (["predict", "@photo.png", "--tls-ca", "@missing.pem"], 1, ["--tls-ca", "missing.pem: no such file"]),
    (["predict", "@photo.png", "--server", "http://localhost:8001"], 1, ["it takes no scheme; give localhost:8001"]),
    # classify
    (["classify", "@folder", "-m", "@tiny.onnx", "-o", "@out.csv"], 1, ["folder: no images found"]),
    (["classify", "@nothing/*.png", "-m", "@tiny.onnx", "-o", "@out.csv"], 1, ["nothing/*.png: no images found"]),
    (["classify", "@data", "-m", "@missing.onnx", "-o", "@out.csv"], 1, ["--model", "missing.onnx: no such file"]),
    (["classify", "@data", "-m", "@truncated.onnx", "-o", "@out.csv"], 1,
     ["truncated.onnx: not an ONNX model onnxruntime can load"]),
    (["classify", "@data", "-m", "@folder", "-o", "@out.csv"], 1, ["--model", "folder: a folder, not a file"]),
    (["classify", "@data", "-m", "@tiny.onnx", "-o", "@photo.png/out.csv"], 1,
     ["--output", "photo.png is a file, not a folder"]),
    (["classify", "@data", "-m", "@tiny.onnx", "-o", "@out.txt"], 1, ["--output", "out.txt: the output must end in .csv"]),
    (["classify", "@data", "-m", "@tiny.onnx", "-o", "@out.csv", "--engine", "ray", "--ray-address", "127.0.0.1:1"],
     1, ["--ray-address 127.0.0.1:1: no Ray cluster answers there"]),
    # bench
    (["bench", "@missing.onnx"], 1, ["missing.onnx: no such model file"]),
    (["bench", "@truncated.onnx"], 1, ["truncated.onnx: not an ONNX model onnxruntime can load"]),
    (["bench", "@folder"], 1, ["folder is a folder, not an ONNX model file"]),
    (["bench", "@tiny.onnx", "--out", "@photo.png"], 1, ["--out", "photo.png is a file, not a folder"]),
    (["bench", "@tiny.onnx", "--concurrency", "0"], 2, ["--concurrency must be >= 1"]),
    (["bench", "@tiny.onnx", "--concurrency=-2"], 2, ["--concurrency must be >= 1"]),
    (["bench", "@tiny.onnx", "--concurrency", "two"], 2, ["--concurrency", "not a comma-separated list of ints"]),
    (["bench", "@tiny.onnx", "--batch-sizes", ""], 2, ["--batch-sizes need"]),
    (["bench", "@tiny.onnx", "--window", "0"], 2, ["--window must be > 0"]),
    (["bench", "@tiny.onnx", "--server-args", '"unclosed', "--start-server"], 2, ["--server-args", "No closing"]),
    (["bench", "--server", "127.0.0.1:1", "--model", "tiny", "--scenario", "", "--concurrency", "1"], 1,
     ["127.0.0.1:1: the metadata of model 'tiny' could not be read: UNAVAILABLE"]),
    (["bench", "--compare", "@missing.json", "@missing.json"], 1, ["--compare", "missing.json: no such file"]),
    (["bench", "--compare", "@empty.txt", "@empty.txt"], 1, ["empty.txt is not a bench.json file"]),
    (["bench", "--compare", "@list.json", "@list.json"], 1, ["list.json is not an edgecnn bench report"]),
    # demo: refused before anything runs
    (["demo", "--out", "@photo.png"], 1, ["--out", "photo.png is a file, not a folder"]),
    (["demo", "--epochs", "0", "--out", "@demo"], 2, ["--epochs must be >= 1"]),
    (["demo", "--images", "100000", "--out", "@demo"], 2, ["--images can be at most"]),
]

NEEDS_TORCH = [
    # train: refused before any image is read
    (["train", "--epochs=-1"], 1, ["--epochs must be positive"]),
    (["train", "--batch-size", "0"], 1, ["--batch-size must be positive"]),
    (["train", "--lr", "0"], 1, ["--lr must be positive"]),
    (["train", "--weight-decay=-1"], 1, ["--weight-decay must be >= 0"]),
    (["train", "--label-smoothing", "2"], 1, ["--label-smoothing must be in [0, 1)"]),
    (["train", "--threads=-1"], 1, ["--threads must be >= 0"]),
    (["train", "--run-dir", "@photo.png"], 1, ["--run-dir", "photo.png is a file, not a folder"]),
    (["train", "--output-dir", "@photo.png/runs"], 1, ["--output-dir", "photo.png is a file, not a folder"]),
    (["train", "--dataset", "folder", "--data-dir", "@folder"], 1, ["folder has no class sub-folders"]),
    (["train", "--dataset", "folder", "--data-dir", "@one-class"], 1, ["one-class has one class sub-folder"]),
    (["train", "--dataset", "folder", "--data-dir", "@missing"], 1, ["--data-dir", "missing: no such folder"]),
    (["train", "--dataset", "folder", "--data-dir", "@photo.png"], 1, ["--data-dir", "photo.png: a file, not a folder"]),
    (["train", "--data-dir", "@photo.png"], 1, ["--data-dir", "photo.png: a file, not a folder"]),
    (["train", "--dataset", "mnist", "--data-dir", "@data"], 1, ["data holds one sub-folder of images per class",
                                                                 "--dataset folder"]),
    (["train", "--resume", "@no-resume"], 1, ["no-resume/resume.safetensors does not exist"]),
    (["train", "--resume", "@bad-json"], 1, ["bad-json/run.json is not valid JSON"]),
    (["train", "--resume", "@missing"], 1, ["--resume", "missing: no such folder"]),
    (["train", "--resume", "@photo.png"], 1, ["--resume", "photo.png: a file, not a folder"]),
    (["train", "--resume", "@folder"], 1, ["--resume", "folder: not a run directory (no run.json in it)"]),
    (["demo", "--model", "no-such-model", "--out", "@demo"], 1, ["unknown model 'no-such-model'"]),
    # evaluate
    (["evaluate", "@no-weights"], 1, ["no-weights/model.safetensors does not exist"]),
    (["evaluate", "@truncated-weights"], 1, ["truncated-weights/model.safetensors is not a readable safetensors"]),
    (["evaluate", "@bad-json"], 1, ["bad-json/run.json is not valid JSON"]),
    (["evaluate", "@folder"], 1, ["RUN_DIR", "folder: not a run directory (no run.json in it)"]),
    (["evaluate", "@photo.png"], 1, ["RUN_DIR", "photo.png: a file, not a folder"]),
    (["evaluate", "@missing"], 1, ["RUN_DIR", "missing: no such folder"]),
    (["evaluate", "@run", "--data-dir", "@missing"], 1, ["--data-dir", "missing: no such folder"]),
    (["evaluate", "@run", "--data-dir", "@photo.png"], 1, ["--data-dir", "photo.png: a file, not a folder"]),
    (["evaluate", "@run", "--dataset", "mnist", "--data-dir", "@data"], 1, ["--dataset folder"]),
    # export of a run directory, and of an ONNX file
    (["export", "@no-weights", "-o", "@exported"], 1, ["no-weights/model.safetensors does not exist"]),
    (["export", "@truncated-weights", "-o", "@exported"], 1, ["truncated-weights/model.safetensors"]),
    (["export", "@text.onnx", "-o", "@exported"], 1, ["text.onnx is not an ONNX model"]),
    (["export", "@truncated.onnx", "-o", "@exported"], 1, ["truncated.onnx is not an ONNX model"]),
    (["export", "@missing.onnx", "-o", "@exported"], 1, ["SOURCE", "missing.onnx: no such file"]),
]

IMPORTS = [  # export of a foreign classifier (3 classes, float input, no edgecnn metadata)
    (["--labels", "@empty.txt"], ["--labels", "empty.txt holds 0 labels but the model gives 3 classes"]),
    (["--labels", "@two-labels.txt"], ["two-labels.txt holds 2 labels"]),
    (["--labels", "@binary.txt"], ["cannot read --labels", "binary.txt"]),
    (["--labels", "@folder"], ["--labels", "folder: a folder, not a file"]),
    (["--calibration-data", "@folder"], ["--calibration-data", "folder holds 0 PNG/JPEG images"]),
    (["--calibration-data", "@calibration-not-images"], ["cannot read calibration image", "0.png"]),
    (["--calibration-data", "@photo.png"], ["--calibration-data", "photo.png: a file, not a folder"]),
]

WITH_SERVER = [
    (["predict", "@photo.png", "--server", "SERVER", "--model", "no-such-model"], 1,
     ["NOT_FOUND: model 'no-such-model' is not served"]),
    (["bench", "--server", "SERVER", "--model", "no-such-model", "--scenario", "", "--concurrency", "1"], 1,
     ["the metadata of model 'no-such-model' could not be read: NOT_FOUND"]),
    (["bench", "--server", "SERVER", "--model", "tiny", "--scenario", "", "--concurrency", "1",
      "--images", "@images-with-a-bad-one"], 1, ["--images", "not-an-image.png: not a PNG or JPEG image"]),
]

SERVE = [  # (arguments after `edgecnn serve`, what stderr's last line says)
    (["@missing.onnx"], "no model file or repository at"),
    (["@folder"], "folder is a directory but holds no NAME/VERSION/model.onnx"),
    (["@truncated.onnx"], "truncated.onnx: not an ONNX model onnxruntime can load"),
    (["@tiny.onnx", "--port", "70000"], "--port must be at most 65535"),
    (["@tiny.onnx", "--metrics-port", "70000"], "--metrics-port must be at most 65535"),
    (["@tiny.onnx", "--max-batch-size", "0"], "max_batch_size must be >= 1"),
    (["@tiny.onnx", "--auth-token-file", "@empty.txt"], "--auth-token-file"),
    (["@tiny.onnx", "--tls-cert", "@missing.pem", "--tls-key", "@missing.pem"], "--tls-cert"),
    (["@tiny.onnx", "--port", "0", "--metrics-host", "a..b"], "cannot serve metrics on a..b:8002"),
    (["@tiny.onnx", "--log-level", "loud"], "--log-level must be one of debug, info, warning, error"),
]


def ids(cases: list[tuple]) -> list[str]:
    return [" ".join(case[0])[:60] for case in cases]


@pytest.mark.parametrize("args, code, says", NO_SERVER, ids=ids(NO_SERVER))
def test_without_a_server(files, args, code, says):
    check(invoke(expand(args, files), files), code, says)


@pytest.mark.parametrize("args, code, says", NEEDS_TORCH, ids=ids(NEEDS_TORCH))
def test_train_evaluate_export(runs, args, code, says):
    check(invoke(expand(args, runs), runs), code, says)


def test_evaluate_on_cuda_where_there_is_none(runs):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    check(invoke(expand(["evaluate", "@run", "--device", "cuda"], runs), runs), 1, ["--device cuda", "--device cpu"])


@pytest.mark.parametrize("flags, says", IMPORTS, ids=ids(IMPORTS))
def test_importing_an_onnx_classifier(files, flags, says):
    pytest.importorskip("onnx")
    from tests.helpers.foreign_models import write_classifier

    write_classifier(files / "foreign.onnx", channels=1, classes=3)
    args = expand(["export", "@foreign.onnx", "-o", "@imported", *flags], files)
    check(invoke(args, files), 1, says)


@pytest.mark.parametrize("args, code, says", WITH_SERVER, ids=ids(WITH_SERVER))
def test_against_a_running_server(files, server, args, code, says):
    check(invoke(expand(args, files, server), files), code, says)


@pytest.mark.parametrize("args, says", SERVE, ids=ids(SERVE))
def test_serve(files, args, says):
    command = [sys.executable, "-c", "from edgecnn.serve.cli import main; main()", "serve", *expand(args, files)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=files)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and says in last, result.stderr


def test_the_file_that_fails_is_named_where_the_server_can_only_count(files):
    """A server that cannot read a model's metadata names the file, in a repository too."""
    from tests.helpers.foreign_models import write_classifier

    foreign = write_classifier(files / "repo" / "m" / "1" / "model.onnx", channels=1, classes=3)
    command = [sys.executable, "-c", "from edgecnn.serve.cli import main; main()", "serve", str(files / "repo"),
               "--port", "0", "--metrics-port", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {foreign}: no edgecnn metadata in this model")

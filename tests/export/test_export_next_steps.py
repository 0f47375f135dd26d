"""`edgecnn export` ends with what to do next, and refuses a bad path before any work.

The last lines name the file to serve on this machine (int8 only when the report's own fresh A/B timing has
it clearly faster than fp32 at both batch sizes), the model name a server gives it, and the `edgecnn serve`
and `edgecnn predict --model NAME` commands; report.json and report.md record the same. The commands are run
as printed against a real server. Every file flag (SOURCE, --labels, --calibration-data, -o/--output) that is
missing or of the wrong kind is one sentence naming the flag and the path, and nothing is written; an ONNX
file whose external weights (torch's model.onnx.data) are not beside it says so.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgecnn.export.pipeline import TIE_MARGIN, serving_choice
from edgecnn.export.report import VariantResult
from edgecnn.serve.cli import app
from edgecnn.serve.server import start_server
from typer.testing import CliRunner

from tests.helpers.exporting import ACCURACY_BOUND, COLOURS, colour_classifier, colour_folder, int8_speed, run_export
from tests.helpers.foreign_models import write_classifier
from tests.helpers.serving import encode, settings_for

ONE_ROUND = ["--timing-rounds", "1"]


def next_steps_of(result) -> list[str]:
    """The lines after `wrote ...`: the file to serve and why, the served name, the commands, the repository."""
    lines = result.stdout.strip().splitlines()
    wrote = next(i for i, line in enumerate(lines) if line.startswith("wrote "))
    return lines[wrote + 1 :]


def command_of(line: str, image: Path, address: str) -> list[str]:
    """A printed `edgecnn ...` line as arguments for the CLI, with the placeholders filled in."""
    words = shlex.split(line.strip().replace("IMAGE", shlex.quote(str(image))).replace("localhost:8001", address))
    assert words[0] == "edgecnn"
    return words[1:]


def predict_as_printed(step: str, image: Path, model: Path) -> str:
    """Serve ``model`` on a free port and run the printed `edgecnn predict` line against it; its output."""
    with start_server(settings_for(model)) as running:
        result = CliRunner().invoke(app, command_of(step, image, running.address), env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.output


def expected_file(report: dict) -> str:
    """The file the report's own fresh timing says to serve: int8 only when clearly faster at both batches."""
    speed = report["int8_speed"]
    comparisons = [speed["latency"], speed["throughput"]]
    faster = all(c["median_speedup"] > 1 + TIE_MARGIN for c in comparisons)
    return "model.int8.onnx" if faster else "model.onnx"


# --- 1 and 2: the file to serve, the name it is served under, the commands -----------------------


def test_an_import_ends_with_the_file_to_serve_its_name_and_the_commands(tmp_path: Path):
    # A 16x16 model of a few hundred weights: int8's quantise/dequantise steps cost more than they save
    # (it lost at batch 64 in every run here), so the file to serve on this machine is fp32.
    original = colour_classifier(tmp_path / "colours.onnx")
    folder = colour_folder(tmp_path / "images")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(COLOURS) + "\n")
    out_dir = tmp_path / "models" / "mine"
    result = run_export(
        original, "-o", out_dir, "--name", "mine", "--labels", labels, "--calibration-data", folder,
        "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--int8-recipes", "u8s8", *ONE_ROUND,
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out_dir / "report.json").read_text())
    serve_file = expected_file(report)
    served_as = "mine" if serve_file == "model.onnx" else "mine-int8"
    assert (report["serve_file"], report["served_as"]) == (serve_file, served_as)
    verdict = "int8 is faster here" if serve_file == "model.int8.onnx" else "int8 is not clearly faster here"
    assert report["serve_reason"].startswith(verdict)

    steps = next_steps_of(result)
    assert steps[0] == f"serve {serve_file} on this machine: {report['serve_reason']}"
    assert steps[1] == f"it is served as model {served_as}:"
    assert steps[2] == f"  edgecnn serve {out_dir / serve_file} --port 8001"
    assert steps[3] == f"  edgecnn predict IMAGE --server localhost:8001 --model {served_as}"
    assert steps[4] == f"in a repository (edgecnn serve REPO), copy {serve_file} to REPO/mine/1/model.onnx: served as mine"
    markdown = (out_dir / "report.md").read_text()
    assert f"## Serving on this machine\n\nServe `{serve_file}`: {report['serve_reason']}." in markdown
    assert f"edgecnn predict IMAGE --server localhost:8001 --model {served_as}\n" in markdown

    # the commands as printed: the served name is the one the server gives the file
    red = tmp_path / "red.png"
    red.write_bytes((folder / "red" / "00.png").read_bytes())
    assert "red" in predict_as_printed(steps[3], red, out_dir / serve_file)
    repository = tmp_path / "repo"
    (repository / "mine" / "1").mkdir(parents=True)
    shutil.copy(out_dir / serve_file, repository / "mine" / "1" / "model.onnx")
    assert "red" in predict_as_printed(steps[3].replace(served_as, "mine"), red, repository)


def test_a_run_export_ends_with_the_file_to_serve_its_name_and_the_commands(run_dir: Path, tmp_path: Path):
    out_dir = tmp_path / "fashion"
    result = run_export(
        run_dir, "-o", out_dir, "--quantize", "int8", "--int8-recipes", "u8s8",
        "--max-accuracy-drop", ACCURACY_BOUND, *ONE_ROUND,
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out_dir / "report.json").read_text())
    serve_file = expected_file(report)
    served_as = "fashion-cnn" if serve_file == "model.onnx" else "fashion-cnn-int8"  # named after the architecture
    assert (report["serve_file"], report["served_as"]) == (serve_file, served_as)
    steps = next_steps_of(result)
    assert steps[0].startswith(f"serve {serve_file} on this machine: int8 is ")
    assert steps[1:4] == [
        f"it is served as model {served_as}:",
        f"  edgecnn serve {out_dir / serve_file} --port 8001",
        f"  edgecnn predict IMAGE --server localhost:8001 --model {served_as}",
    ]
    digit = tmp_path / "digit.png"
    digit.write_bytes(encode(np.zeros((28, 28, 1), np.uint8)))
    assert str(digit) in predict_as_printed(steps[3], digit, out_dir / serve_file)


def test_without_int8_the_file_to_serve_is_fp32(tmp_path: Path):
    out_dir = tmp_path / "out dir"  # a space: the printed command quotes the path
    result = run_export(write_classifier(tmp_path / "plain.onnx"), "-o", out_dir, *ONE_ROUND)
    assert result.exit_code == 0, result.output
    steps = next_steps_of(result)
    assert steps[0] == "serve model.onnx on this machine: no int8 variant was asked for"
    assert steps[2] == f"  edgecnn serve {shlex.quote(str(out_dir / 'model.onnx'))} --port 8001"
    assert json.loads((out_dir / "report.json").read_text())["served_as"] == "plain"


# --- the decision itself, fed timings -------------------------------------------------------------


def variant(name: str, ok: bool = True) -> VariantResult:
    return VariantResult(
        variant=name, file=f"{name}.onnx", model_name=f"m-{name}", size_bytes=1, accuracy=1.0, accuracy_change=0.0,
        max_abs_logit_diff=0.0, top1_agreement=1.0, latency_ms=1.0, throughput_ips=1.0,
        status="ok" if ok else "failed",
    )


FP32_INT8 = [variant("fp32"), variant("int8")]


def test_int8_is_served_when_it_is_clearly_faster_at_both_batch_sizes():
    choice, reason = serving_choice(FP32_INT8, int8_speed((5, 5, 5), (4, 4, 4)))  # fp32 takes 10 ms
    assert choice == "int8"
    assert reason == "int8 is faster here (2.00x fp32 at batch 1, 2.50x fp32 at batch 64, fresh A/B timing)"


@pytest.mark.parametrize(
    "latency_ms, throughput_ms, figures",
    [
        ((12.5, 12.5, 12.5), (4, 4, 4), "0.80x fp32 at batch 1, 2.50x fp32 at batch 64"),  # loses at batch 1
        ((5, 5, 5), (12.5, 12.5, 12.5), "2.00x fp32 at batch 1, 0.80x fp32 at batch 64"),  # loses at batch 64
        ((9.8, 9.8, 9.8), (9.8, 9.8, 9.8), "1.02x fp32 at batch 1, 1.02x fp32 at batch 64"),  # within the jitter
    ],
)
def test_fp32_is_served_when_int8_is_not_clearly_faster_at_both(latency_ms, throughput_ms, figures):
    choice, reason = serving_choice(FP32_INT8, int8_speed(latency_ms, throughput_ms))
    assert choice == "fp32"
    assert reason == f"int8 is not clearly faster here ({figures}, fresh A/B timing)"


def test_fp32_is_served_when_int8_failed_or_was_not_asked_for_and_nothing_when_fp32_failed():
    fast = int8_speed((5, 5, 5), (4, 4, 4))
    assert serving_choice([variant("fp32"), variant("int8", ok=False)], None) == ("fp32", "int8 failed its checks")
    assert serving_choice([variant("fp32"), variant("fp16")], None) == ("fp32", "no int8 variant was asked for")
    assert serving_choice([variant("fp32", ok=False), variant("int8")], fast)[0] == ""


# --- 3: torch's external data file ----------------------------------------------------------------


def with_external_weights(tmp_path: Path) -> Path:
    """model.onnx with its weights in model.onnx.data beside it, as torch.onnx.export writes a large model."""
    folder = tmp_path / "torch-export"
    folder.mkdir()
    model = onnx.load(str(write_classifier(tmp_path / "inline.onnx")))
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    assert (folder / "model.onnx.data").is_file()
    return path


def test_a_model_with_its_external_weights_beside_it_imports(tmp_path: Path):
    out_dir = tmp_path / "out"
    result = run_export(with_external_weights(tmp_path), "-o", out_dir, *ONE_ROUND)
    assert result.exit_code == 0, result.output
    assert (out_dir / "model.onnx").is_file() and not (out_dir / "model.onnx.data").exists()  # weights inside


def test_missing_external_weights_are_explained(tmp_path: Path):
    path = with_external_weights(tmp_path)
    (path.parent / "model.onnx.data").unlink()
    out_dir = tmp_path / "out"
    result = run_export(path, "-o", out_dir, *ONE_ROUND)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: {path} refers to external weights in model.onnx.data, which is missing: copy it beside model.onnx"
    ]
    assert not out_dir.exists()


# --- 4: every file flag, missing or of the wrong kind ----------------------------------------------


def _paths(tmp_path: Path) -> dict[str, Path]:
    model = write_classifier(tmp_path / "model.onnx")
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "notes.txt").write_text("not a model\n")
    return {"model": model, "folder": tmp_path / "a-folder", "file": tmp_path / "notes.txt"}


FILE_FLAGS = {
    # id: (arguments after `edgecnn export`, with @model, @folder, @file, @missing; the one error line)
    "source-missing-onnx": (["@missing.onnx"], "SOURCE @missing.onnx: no such file"),
    "source-missing": (["@missing"], "SOURCE @missing: no such run directory or ONNX file"),
    "source-folder-not-a-run": (["@folder"], "SOURCE @folder: a folder without run.json, so not a run directory of `edgecnn train`"),
    "source-file-not-onnx": (["@file"], "SOURCE @file is not an ONNX model"),
    "labels-missing": (["@model", "--labels", "@missing.txt"], "--labels @missing.txt: no such file"),
    "labels-folder": (["@model", "--labels", "@folder"], "--labels @folder: a folder, not a file"),
    "calibration-missing": (["@model", "--calibration-data", "@missing"], "--calibration-data @missing: no such folder"),
    "calibration-file": (["@model", "--calibration-data", "@file"], "--calibration-data @file: a file, not a folder"),
}


@pytest.mark.parametrize("case", list(FILE_FLAGS))
def test_a_bad_file_flag_is_one_sentence_naming_it_and_writes_nothing(tmp_path: Path, case: str):
    args, says = FILE_FLAGS[case]
    paths = _paths(tmp_path)
    fill = lambda text: text.replace("@missing", str(tmp_path / "missing")).replace(  # noqa: E731
        "@model", str(paths["model"])).replace("@folder", str(paths["folder"])).replace("@file", str(paths["file"]))
    out_dir = tmp_path / "out"
    result = run_export(*map(fill, args), "-o", out_dir, *ONE_ROUND)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {fill(says)}"), result.output
    assert not out_dir.exists()


@pytest.mark.parametrize("where", ["itself", "above"])
def test_an_output_that_is_a_file_is_refused_before_any_work(tmp_path: Path, where: str):
    paths = _paths(tmp_path)
    output = paths["file"] if where == "itself" else paths["file"] / "out"
    result = run_export(paths["model"], "-o", output, *ONE_ROUND)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [f"error: -o/--output {output}: {paths['file']} is a file, not a folder"]

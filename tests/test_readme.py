"""Every code block of README.md, run as written, so the document cannot rot.

Shell blocks run under `bash -euo pipefail` in a folder prepared with the files they name (digit.png,
certificates, tokens, images); the only thing added is that `edgecnn serve`, which a reader starts in another
terminal, runs in the background (on loopback: `--host 127.0.0.1` is appended) until it reports serving, and
is stopped (SIGTERM) when the block ends.
Python blocks run in a child process of the dev venv (tritonclient cannot share a process with our protobuf
messages). JSON blocks are compared with what the code uses. `test_every_block_is_run_by_a_test` fails
when a block is added that no test here claims.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edgecnn.benchmarks.certs import issue, make_pki
from PIL import Image

from tests.helpers.models import write_tiny_model

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
BLOCK_TIMEOUT_S = 600

# Each block is claimed by the start of its first line; the test that runs it is named beside it.
CLAIMS = {
    "python3 -m venv .venv && .venv/bin/pip install -e": "test_setup_blocks_are_ci_and_the_demo",
    "python3 -m venv .venv && .venv/bin/pip install -q -e": "test_setup_blocks_are_ci_and_the_demo",
    "# 1. Train": "test_the_pipeline_step_by_step",
    "edgecnn classify 'photos/**/*.jpg'": "test_labelling_on_ray",
    "import torch": "test_serving_a_model_trained_elsewhere",
    "# labels.txt: one class name per line": "test_serving_a_model_trained_elsewhere",
    "# edgecnn launches 2 local processes": "test_training_on_several_processes",
    "shapes/\n": "test_training_on_an_image_folder",
    "edgecnn train --data-dir shapes": "test_training_on_an_image_folder",
    "import numpy as np, tritonclient.grpc as tc\nclient = tc.InferenceServerClient(\"localhost:8001\")":
        "test_tritonclient_unchanged",
    '{"loadBalancingConfig"': "test_the_failover_service_config_is_the_clients",
    "import tritonclient.grpc as tc\nclient": "test_model_control_with_tritonclient",
    '{"version_policy"': "test_the_config_json_example_loads",
    "cp -r new-model/": "test_publishing_a_version_by_rename",
    "mkdir -p models/fashion/1": "test_an_export_folder_becomes_a_repository_entry",
    "# --tls-client-ca": "test_tls_tokens_with_predict_and_tritonclient",
    "import numpy as np, tritonclient.grpc as tc\ntoken": "test_tls_tokens_with_predict_and_tritonclient",
}

# `edgecnn serve` in the background until it logs "serving" (or exits: then the block fails at once).
PRELUDE = r"""
set -euo pipefail
servers=0
edgecnn() {
    if [ "${1-}" = serve ]; then
        servers=$((servers + 1))
        local log="serve-$servers.log"
        command edgecnn "$@" --host 127.0.0.1 2>"$log" &
        "$README_PYTHON" -c '
import json, os, sys, time
log, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    for line in open(log):
        if line.startswith("{") and json.loads(line).get("msg") == "serving":
            sys.exit(0)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("edgecnn serve exited: " + open(log).read())
    time.sleep(0.05)
sys.exit("edgecnn serve did not report serving within 120 s: " + open(log).read())
' "$log" "$!"
    else
        command edgecnn "$@"
    fi
}
stop_servers() { local pids; pids=$(jobs -p); if [ -n "$pids" ]; then kill -TERM $pids; wait; fi; }
trap stop_servers EXIT
"""


def blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced block of README.md, in order."""
    text = README.read_text()
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def block(start: str) -> str:
    """The one block whose code starts with ``start``."""
    found = [code for _, code in blocks() if code.startswith(start)]
    assert len(found) == 1, f"README.md: {len(found)} blocks start with {start!r}"
    return found[0]


def environment() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    return env | {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "README_PYTHON": sys.executable,
                  "COLUMNS": "160"}


def run_bash(code: str, folder: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-c", PRELUDE + code], cwd=folder, env=environment(), capture_output=True,
                            text=True, timeout=BLOCK_TIMEOUT_S)
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(folder.glob("serve-*.log")))
    assert result.returncode == 0, f"{result.stdout[-5000:]}\n{result.stderr[-5000:]}{logs}"
    return result


def python_in_bash(code: str) -> str:
    """A python block as a step of a shell block (it then runs while that block's server does)."""
    return f"\n\"$README_PYTHON\" - <<'README_PYTHON_BLOCK'\n{code}README_PYTHON_BLOCK\n"


def mnist_digits(count: int) -> list[tuple[np.ndarray, str]]:
    """Real MNIST test digits of the embedded set's test split, with their labels."""
    from edgecnn.train.data import DatasetSpec, load_splits

    _, test = load_splits(DatasetSpec(name="mnist", download=False))
    return [(test.images[i][:, :, 0], test.class_names[test.labels[i]]) for i in range(count)]


def save_digit(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_repository_model(folder: Path, name: str = "fashion", version: str = "1") -> Path:
    """A tiny 28x28x1 classifier of ten digits at folder/NAME/VERSION/model.onnx."""
    return write_tiny_model(folder / name / version / "model.onnx", name=name, height=28, width=28,
                            labels=[str(d) for d in range(10)])


def test_every_block_is_run_by_a_test():
    for language, code in blocks():
        claimed = [start for start in CLAIMS if code.startswith(start)]
        longest = max(claimed, key=len, default=None)
        assert longest, f"README.md block not run by any test:\n{code}"
        assert CLAIMS[longest] in globals(), CLAIMS[longest]
    assert all(any(code.startswith(start) for _, code in blocks()) for start in CLAIMS), "a claim without a block"


def test_setup_blocks_are_ci_and_the_demo(tmp_path):
    first = block("python3 -m venv .venv && .venv/bin/pip install -e").strip()
    second = block("python3 -m venv .venv && .venv/bin/pip install -q -e").strip()
    assert second in (ROOT / ".ci" / "run").read_text()  # CI runs the second block as written
    # The first creates the same environment (CI's, quietly) and runs the demo in it: run that part here.
    install, demo = first.rsplit(" && ", 1)
    assert install == second.rsplit(" && ", 1)[0].replace(" -q", "") and demo == ".venv/bin/edgecnn demo"
    result = subprocess.run([str(BIN / "edgecnn"), "demo"], cwd=tmp_path, env=environment(), capture_output=True,
                            text=True, timeout=BLOCK_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    out = tmp_path / "edgecnn-demo"  # the demo's default --out
    assert {"model.onnx", "model.int8.onnx", "report.md"} <= {p.name for p in (out / "export").iterdir()}
    assert (out / "bench" / "bench.json").is_file() and list((out / "runs").glob("*/run.json"))
    # The labels it printed for the real test images it sent: most right, each PNG named with its truth.
    correct, sent = map(int, re.search(r"(\d+)/(\d+) correct", result.stdout).groups())
    assert sent == len(list((out / "images").glob("*.png"))) and correct >= 0.8 * sent


def test_the_pipeline_step_by_step(tmp_path):
    digits = mnist_digits(6)
    save_digit(tmp_path / "digit.png", digits[0][0])
    for i, (pixels, label) in enumerate(digits):
        save_digit(tmp_path / "photos" / label / f"{i}.png", pixels)
    result = run_bash(block("# 1. Train"), tmp_path)
    assert (tmp_path / "runs" / "fashion" / "run.json").is_file()
    assert {"model.onnx", "model.int8.onnx", "model.fp16.onnx"} <= {p.name for p in (tmp_path / "exports" / "fashion").iterdir()}
    rank_one = re.search(r"digit\.png\s*│\s*1\s*│\s*(\S+)", result.stdout)
    assert rank_one and rank_one.group(1) == digits[0][1], result.stdout
    assert json.loads((tmp_path / "bench-out" / "bench.json").read_text())["served"]
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "labels.parquet").to_pylist()
    assert len(rows) == len(digits) and all(row["label"] is not None for row in rows)


def test_labelling_on_ray(tmp_path):
    for i, (pixels, label) in enumerate(mnist_digits(4)):
        save_digit(tmp_path / "photos" / label / f"{i}.png", pixels)
        Image.fromarray(pixels).save(tmp_path / "photos" / label / f"{i}.jpg")
    write_tiny_model(tmp_path / "exports" / "fashion" / "model.int8.onnx", height=28, width=28,
                     labels=[str(d) for d in range(10)])
    ray = str(BIN / "ray")
    started = subprocess.run([ray, "start", "--head", "--num-cpus", "2", "--include-dashboard", "false",
                              "--disable-usage-stats"], env=environment(), capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr
    try:
        run_bash(block("edgecnn classify 'photos/**/*.jpg'"), tmp_path)
    finally:
        subprocess.run([ray, "stop", "--force"], env=environment(), capture_output=True, timeout=120)
    rows = list(csv.DictReader((tmp_path / "labels.csv").open()))
    assert len(rows) == 8 and all(row["label"] for row in rows)  # the second line: every PNG and JPEG


def test_serving_a_model_trained_elsewhere(tmp_path):
    labels = ["airplane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    rng = np.random.default_rng(0)
    for label in labels:
        for i in range(4):
            picture = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(picture).save(save_digit(tmp_path / "images" / label / f"{i}.png", picture[:, :, 0]))
    Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    python = subprocess.run([sys.executable, "-c", block("import torch")], cwd=tmp_path, env=environment(),
                            capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    assert python.returncode == 0, python.stderr
    result = run_bash(block("# labels.txt: one class name per line"), tmp_path)
    assert re.search(r"photo\.jpg\s*│\s*1\s*│\s*(" + "|".join(labels) + ")", result.stdout), result.stdout


def test_training_on_an_image_folder(tmp_path):
    classes = re.findall(r"── (\w+)/", block("shapes/\n"))  # the folder the tree shows, with real images
    assert classes == ["circle", "square", "triangle"]
    rng = np.random.default_rng(0)
    for number, name in enumerate(classes):
        for i in range(8):
            picture = np.full((40, 40, 3), 30 * number, np.uint8) + rng.integers(0, 20, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(picture).save(save_digit(tmp_path / "shapes" / name / f"{i}.png", picture[:, :, 0]))
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in (tmp_path / "shapes").rglob("*"))
    result = run_bash(block("edgecnn train --data-dir shapes"), tmp_path)
    assert "3 classes (circle, square, triangle)" in result.stdout + result.stderr
    assert json.loads((tmp_path / "runs" / "shapes" / "run.json").read_text())
    assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in (tmp_path / "shapes").rglob("*")) == before


def test_training_on_several_processes(tmp_path):
    run_bash(block("# edgecnn launches 2 local processes"), tmp_path)
    for run in ("ddp", "ddp2"):
        assert json.loads((tmp_path / "runs" / run / "run.json").read_text())["world_size"] == 2


def test_tritonclient_unchanged(tmp_path):
    write_tiny_model(tmp_path / "fashion-cnn-int8.onnx", name="fashion-cnn-int8", height=28, width=28,
                     labels=[str(d) for d in range(10)])
    code = block("import numpy as np, tritonclient.grpc as tc\nclient")
    result = run_bash("edgecnn serve fashion-cnn-int8.onnx --port 8001\n"
                      + python_in_bash(code), tmp_path)
    scores = re.findall(r"b'(\d\.\d+):(\d):(\d)'", result.stdout)
    assert len(scores) == 3 and all(index == label for _, index, label in scores), result.stdout


def test_the_failover_service_config_is_the_clients():
    from edgecnn.serve.client import FAILOVER_SERVICE_CONFIG

    assert json.loads(block('{"loadBalancingConfig"')) == FAILOVER_SERVICE_CONFIG


def test_model_control_with_tritonclient(tmp_path):
    write_repository_model(tmp_path / "models")
    code = block("import tritonclient.grpc as tc\nclient")
    serve = re.search(r"# (edgecnn serve models/ --model-control-mode explicit)\n", code).group(1)
    result = run_bash(f"{serve}\n" + python_in_bash(code), tmp_path)
    assert 'name: "fashion"' in result.stdout and 'state: "READY"' in result.stdout  # the index after the load


def test_the_config_json_example_loads(tmp_path):
    from edgecnn.serve.repository import ModelConfig

    (tmp_path / "config.json").write_text(block('{"version_policy"'))
    config = ModelConfig.read(tmp_path)
    assert config.version_policy.latest == 2 and config.labels == ("cat", "dog")


def test_publishing_a_version_by_rename(tmp_path):
    from edgecnn.serve.repository import version_sources

    write_repository_model(tmp_path / "models")
    write_tiny_model(tmp_path / "new-model" / "model.onnx", name="fashion", version="3", height=28, width=28)
    run_bash(block("cp -r new-model/"), tmp_path)
    assert sorted(version_sources(tmp_path / "models", "fashion")) == ["1", "3"]
    assert not (tmp_path / "models" / "fashion" / ".3").exists()


def test_an_export_folder_becomes_a_repository_entry(tmp_path):
    for variant in ("model.onnx", "model.int8.onnx"):
        write_tiny_model(tmp_path / "exports" / "fashion" / variant, name="fashion-cnn", height=28, width=28)
    (tmp_path / "exports" / "fashion" / "report.json").write_text("{}")
    run_bash(block("mkdir -p models/fashion/1"), tmp_path)
    serving = [json.loads(line) for line in (tmp_path / "serve-1.log").read_text().splitlines()
               if line.startswith("{") and '"serving"' in line]
    assert serving[0]["models"] == ["fashion/1"]


def test_tls_tokens_with_predict_and_tritonclient(tmp_path):
    digit, label = mnist_digits(1)[0]
    save_digit(tmp_path / "digit.png", digit)
    write_repository_model(tmp_path / "models")
    ca, clients_ca = make_pki(tmp_path / "pki", "ca"), make_pki(tmp_path / "pki", "clients-ca")
    server, me = issue(ca, tmp_path / "pki", "server", server=True), issue(clients_ca, tmp_path / "pki", "me",
                                                                           server=False)
    for source, name in ((server.cert, "server.pem"), (server.key, "server.key"), (clients_ca.cert, "clients-ca.pem"),
                         (ca.cert, "ca.pem"), (me.cert, "me.pem"), (me.key, "me.key")):
        (tmp_path / name).write_bytes(source.read_bytes())
    token = "readme-token-5d2f8a1c9e7b3064"
    (tmp_path / "tokens.txt").write_text(f"{token} inference,metadata\n")
    (tmp_path / "my.token").write_text(token + "\n")  # as an editor saves it: with the newline
    code = block("import numpy as np, tritonclient.grpc as tc\ntoken")
    result = run_bash(block("# --tls-client-ca") + python_in_bash(code), tmp_path)
    assert "(1, 10)" in result.stdout
    assert re.search(r"digit\.png\s*│\s*1\s*│\s*(\S+)", result.stdout), result.stdout

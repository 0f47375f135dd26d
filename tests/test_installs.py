"""The installs users run, each in a real venv made here with exactly `pip install "<repo>[EXTRAS]"`.

    [serve]         the edge install: every serving feature, no torch; the train commands name their extra
    [train]         train, evaluate, export (of a run and of a foreign ONNX file); the serve commands name theirs
    [serve,plots]   `bench` draws its plots

Each venv is built once per session from pip's own cache (the first run on a machine downloads), and nothing
of the dev venv leaks in: the commands run from the venv's bin folder, in a folder outside the repository,
without PYTHONPATH. The clients that check the edge server are outside its venv (tritonclient, plain grpc).
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from edgecnn.benchmarks.certs import issue, make_pki
from PIL import Image

from tests.helpers.foreign_models import write_classifier
from tests.helpers.models import reference_outputs, write_tiny_model
from tests.helpers.processes import ServeProcess

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT_S = 900  # a first run on a machine downloads the wheels
COMMAND_TIMEOUT_S = 300
# Packages of the other extras: a module of train/ or export/ may fail to import on the edge install only
# for want of one of these (the commands then say which extra to install).
TRAIN_EXTRA_IMPORTS = {"torch", "onnx", "onnxscript", "safetensors", "matplotlib"}

IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, sys
results = {}
for package in ("edgecnn.protos", "edgecnn.serve", "edgecnn.benchmarks", "edgecnn.train", "edgecnn.export"):
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        try:
            importlib.import_module(info.name)
            results[info.name] = None
        except ModuleNotFoundError as error:
            results[info.name] = "missing " + str(error.name)
        except Exception as error:
            results[info.name] = type(error).__name__ + ": " + str(error)
print(json.dumps(results))
"""


class Venv(NamedTuple):
    root: Path
    work: Path  # a folder outside the repository to run commands in

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)

    def run(self, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
        """``args[0]`` from the venv's bin folder, in the work folder, with the venv's environment only."""
        return subprocess.run([self.bin(args[0]), *args[1:]], cwd=self.work, env=venv_environment(self.root),
                              capture_output=True, text=True, timeout=timeout)

    def edgecnn(self, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
        return self.run("edgecnn", *args, timeout=timeout)


def venv_environment(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return env | {"PATH": f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}", "COLUMNS": "200"}


def build_venv(folder: Path, extras: str) -> Venv:
    """``python -m venv`` and ``pip install "<repo>[extras]"``; ``pip check`` must be clean."""
    root = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=COMMAND_TIMEOUT_S)
    venv = Venv(root, folder)
    installed = venv.run("pip", "install", "--quiet", f"{REPO}[{extras}]", timeout=INSTALL_TIMEOUT_S)
    assert installed.returncode == 0, installed.stderr[-3000:]
    check = venv.run("pip", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    return venv


@pytest.fixture(scope="session")
def serve_venv(tmp_path_factory) -> Venv:
    return build_venv(tmp_path_factory.mktemp("install-serve"), "serve")


@pytest.fixture(scope="session")
def train_venv(tmp_path_factory) -> Venv:
    return build_venv(tmp_path_factory.mktemp("install-train"), "train")


@pytest.fixture(scope="session")
def plots_venv(tmp_path_factory) -> Venv:
    return build_venv(tmp_path_factory.mktemp("install-serve-plots"), "serve,plots")


def installed(venv: Venv) -> set[str]:
    listing = venv.run("pip", "list", "--format", "json")
    return {package["name"].lower() for package in json.loads(listing.stdout)}


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def write_images(folder: Path, count: int, size: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / f"image{i}.png")
    return folder


# --- the edge install: edgecnn[serve] --------------------------------------------------------------------


def test_edge_install_has_no_torch_and_imports_every_module_of_its_commands(serve_venv):
    assert not {"torch", "onnx", "onnxscript", "safetensors", "matplotlib"} & installed(serve_venv)
    result = serve_venv.run("python", "-c", IMPORT_EVERY_MODULE)
    assert result.returncode == 0, result.stderr
    problems = json.loads(result.stdout)
    edge = {name: why for name, why in problems.items()
            if name.startswith(("edgecnn.protos.", "edgecnn.serve.", "edgecnn.benchmarks."))}
    assert len(edge) > 40 and not any(edge.values()), {name: why for name, why in edge.items() if why}
    others = {name: why for name, why in problems.items() if name not in edge}
    allowed = {f"missing {name}" for name in TRAIN_EXTRA_IMPORTS}
    assert all(why is None or why in allowed for why in others.values()), others


def test_edge_install_passes_the_smoke_script(serve_venv):
    result = serve_venv.run("python", "-m", "edgecnn.serve.smoke", "--timeout-s", "120")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("smoke: OK (smoke: ")


def test_smoke_script_fails_in_one_line_without_hanging_when_cuda_is_missing(serve_venv):
    started = time.monotonic()
    result = serve_venv.run("python", "-m", "edgecnn.serve.smoke", "--provider", "cuda", "--timeout-s", "120")
    assert result.returncode == 1
    first = result.stderr.splitlines()[0]
    assert first.startswith("smoke: FAILED at start: the server exited with code 1 before serving: "), result.stderr
    assert "--provider cuda" in first and "onnxruntime-gpu" in first
    assert time.monotonic() - started < 110  # it stopped on the server's exit, not on its deadline


@pytest.mark.parametrize("args", [
    ["train", "--epochs", "1"],
    ["evaluate", "runs/some-run"],
    ["export", "model.onnx", "-o", "out"],
])
def test_edge_install_names_the_extra_the_train_commands_need(serve_venv, args):
    (serve_venv.work / "runs" / "some-run").mkdir(parents=True, exist_ok=True)
    (serve_venv.work / "model.onnx").write_bytes(b"not used")
    line = one_line_error(serve_venv.edgecnn(*args))
    assert line.startswith(f"error: `edgecnn {args[0]}` needs the train extra") and "pip install 'edgecnn[train]'" in line


@pytest.fixture(scope="module")
def edge_pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edge-pki")
    ca, other_ca, client_ca = make_pki(folder, "ca"), make_pki(folder, "other-ca"), make_pki(folder, "client-ca")
    return {"folder": folder, "ca": ca, "other_ca": other_ca, "server": issue(ca, folder, "server", server=True),
            "rotated": issue(other_ca, folder, "rotated", server=True),
            "client": issue(client_ca, folder, "client", server=False), "client_ca": client_ca}


ADMIN_TOKEN, READER_TOKEN = "edge-admin-7f3c9d2e8a41b6", "edge-reader-91ab5c7d3e20f4"

# Triton's client registers its own `inference.*` protobuf messages, which cannot share a process with ours:
# it runs in a child process of the dev venv, outside the edge install, like any real client.
TRITON_CLIENT = """
import json, sys
import grpc, numpy as np
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc

address, ca, cert, key, images_path, admin, reader = sys.argv[1:]
client = tc.InferenceServerClient(address, ssl=True, root_certificates=ca, private_key=key, certificate_chain=cert,
                                  channel_args=[("grpc.use_local_subchannel_pool", 1)])
bearer = lambda token: {"authorization": "Bearer " + token}
def status(call):
    try:
        call()
    except tc.InferenceServerException as error:
        return error.status()
    return "OK"
read = lambda path: open(path, "rb").read()
channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(read(ca), read(key), read(cert)),
                              options=[("grpc.use_local_subchannel_pool", 1)])
health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
images = np.load(images_path)
pixels = tc.InferInput("images", list(images.shape), "UINT8")
pixels.set_data_from_numpy(images)
out = {"health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
       "live": client.is_server_live(),
       "infer_without_token": status(lambda: client.infer("tiny", [pixels]))}
out["probabilities"] = client.infer("tiny", [pixels], headers=bearer(reader)).as_numpy("probabilities").tolist()
if admin != "-":
    out["unload_as_reader"] = status(lambda: client.unload_model("tiny", headers=bearer(reader)))
    client.unload_model("tiny", headers=bearer(admin))
    out["ready_after_unload"] = client.is_model_ready("tiny", headers=bearer(reader))
    client.load_model("tiny", headers=bearer(admin))
    out["ready_after_load"] = client.is_model_ready("tiny", headers=bearer(reader))
    index = client.get_model_repository_index(headers=bearer(admin), as_json=True)["models"]
    out["index"] = [[m["name"], m["version"], m["state"]] for m in index]
print(json.dumps(out))
"""


def triton_client(address: str, ca: Path, client, images: Path, admin: str = "-") -> dict:
    result = subprocess.run([sys.executable, "-c", TRITON_CLIENT, address, str(ca), str(client.cert), str(client.key),
                             str(images), admin, READER_TOKEN], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_edge_install_serves_mutual_tls_tokens_metrics_and_model_control_to_outside_clients(
        serve_venv, edge_pki, tmp_path):
    repository = tmp_path / "models"
    model = write_tiny_model(repository / "tiny" / "1" / "model.onnx", name="tiny")
    images = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    expected = reference_outputs(model, images)["probabilities"]  # the ground truth: a direct onnxruntime run
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"{ADMIN_TOKEN}\n{READER_TOKEN} inference,metadata\n")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(edge_pki["server"].cert.read_bytes())
    key.write_bytes(edge_pki["server"].key.read_bytes())
    client = edge_pki["client"]
    server = ServeProcess(
        str(repository), "--model-control-mode", "explicit", "--load-model", "tiny", "--host", "127.0.0.1",
        "--port", "0", "--metrics-port", "0", "--metrics-host", "127.0.0.1", "--intra-op-threads", "1",
        "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(edge_pki["client_ca"].cert),
        "--auth-token-file", str(tokens), command=[serve_venv.bin("edgecnn")])
    try:
        serving = server.wait_for_log("serving")
        address = serving["address"]
        assert serving["tls"] == "mutual TLS" and serving["auth"] == "bearer tokens"
        answers = triton_client(address, edge_pki["ca"].cert, client, tmp_path / "images.npy", admin=ADMIN_TOKEN)
        assert answers["health"] == "SERVING" and answers["live"]
        assert answers["infer_without_token"] == "StatusCode.UNAUTHENTICATED"
        np.testing.assert_allclose(answers["probabilities"], expected, rtol=1e-5, atol=1e-6)
        assert answers["unload_as_reader"] == "StatusCode.PERMISSION_DENIED"
        assert answers["ready_after_unload"] is False and answers["ready_after_load"] is True
        assert answers["index"] == [["tiny", "1", "READY"]]
        _check_metrics(serving["metrics_port"], edge_pki["ca"].cert, client)
        _check_predict_in_the_venv(serve_venv, address, edge_pki["ca"].cert, client, tmp_path)

        cert.write_bytes(edge_pki["rotated"].cert.read_bytes())  # rotation: a certificate of another CA
        key.write_bytes(edge_pki["rotated"].key.read_bytes())
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log("TLS certificates reloaded", timeout=30)
        rotated = triton_client(address, edge_pki["other_ca"].cert, client, tmp_path / "images.npy")
        np.testing.assert_allclose(rotated["probabilities"], expected, rtol=1e-5, atol=1e-6)

        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
    finally:
        server.stop()


def _check_metrics(port: int, ca: Path, client) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(client.cert), str(client.key))
    text = urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context, timeout=10).read().decode()
    assert 'edgecnn_requests_total{model="tiny",status="OK",version="1"}' in text


def _check_predict_in_the_venv(venv: Venv, address, ca, client, tmp_path) -> None:
    image = write_images(tmp_path / "predict", 1) / "image0.png"
    token = tmp_path / "reader.token"
    token.write_text(READER_TOKEN + "\n")
    result = venv.edgecnn("predict", str(image), "--server", address, "--tls-ca", str(ca), "--tls-cert",
                          str(client.cert), "--tls-key", str(client.key), "--token-file", str(token), "--top-k", "2")
    assert result.returncode == 0, result.stderr
    assert "tiny (version 1)" in result.stdout and any(label in result.stdout for label in ("zero", "one", "two"))


def test_edge_install_classifies_a_folder_offline(serve_venv, tmp_path):
    model = write_tiny_model(tmp_path / "tiny.onnx")
    images = write_images(tmp_path / "photos", 5)
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    output = tmp_path / "labels.csv"
    result = serve_venv.edgecnn("classify", str(images), "-m", str(model), "-o", str(output), "--no-progress")
    assert result.returncode == 0, result.stderr
    import csv

    rows = {Path(row["path"]).name: row for row in csv.DictReader(output.open())}
    assert len(rows) == 6 and rows["broken.png"]["error"] and not rows["broken.png"]["label"]
    assert all(rows[f"image{i}.png"]["label"] in ("zero", "one", "two") for i in range(5))


SHORT_BENCH = ["--start-server", "--batch-sizes", "1", "--concurrency", "1", "--scenario", "", "--duration", "0.3",
               "--point-warmup", "0.1", "--warmup", "0.1", "--window", "0.1", "--max-seconds", "1",
               "--side-by-side", "1", "--server-args", "--intra-op-threads 1"]


def test_edge_install_benchmarks_without_plots_and_says_why(serve_venv, tmp_path):
    model = write_tiny_model(tmp_path / "tiny.onnx")
    out = tmp_path / "bench"
    result = serve_venv.edgecnn("bench", str(model), *SHORT_BENCH, "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "bench.json").read_text())
    assert report["served"] and report["inprocess"]
    assert not list(out.glob("*.png"))
    assert "pip install 'edgecnn[plots]'" in result.stdout + result.stderr


@pytest.mark.parametrize("install, missing", [("serve_venv", "torch"), ("train_venv", "grpc")])
def test_demo_names_both_extras_it_needs_on_either_install(request, install, missing, tmp_path):
    venv = request.getfixturevalue(install)
    line = one_line_error(venv.edgecnn("demo", "--out", str(tmp_path / "demo")))
    assert line == (f"error: `edgecnn demo` needs the train and serve extras ({missing} is not installed): "
                    "pip install 'edgecnn[train,serve]'")
    assert not (tmp_path / "demo" / "runs").exists()  # it stopped before training


# --- edgecnn[serve,plots] ----------------------------------------------------------------------------------


def test_serve_and_plots_install_draws_the_bench_plots(plots_venv, tmp_path):
    model = write_tiny_model(tmp_path / "tiny.onnx")
    out = tmp_path / "bench"
    result = plots_venv.edgecnn("bench", str(model), *SHORT_BENCH, "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    plots = sorted(out.glob("*.png"))
    assert {p.name for p in plots} >= {"inprocess.png", "latency_vs_throughput_fp32.png"}
    for plot in plots:
        with Image.open(plot) as picture:
            assert picture.format == "PNG" and picture.width >= 300 and picture.height >= 200
    assert "torch" not in installed(plots_venv)


# --- edgecnn[train] ------------------------------------------------------------------------------------------


def test_train_install_trains_evaluates_and_exports_without_the_serve_extra(train_venv):
    assert not {"grpcio", "prometheus-client"} & installed(train_venv)
    run = train_venv.work / "run"
    trained = train_venv.edgecnn("train", "--model", "mnist-cnn", "--epochs", "1", "--run-dir", str(run),
                                 "--no-progress")
    assert trained.returncode == 0, trained.stderr
    assert (run / "run.json").is_file() and list(run.glob("*.safetensors"))
    evaluated = train_venv.edgecnn("evaluate", str(run))
    assert evaluated.returncode == 0 and "accuracy" in evaluated.stdout, evaluated.stderr
    exported = train_venv.edgecnn("export", str(run), "-o", str(train_venv.work / "exported"))
    assert exported.returncode == 0, exported.stderr
    assert {"model.onnx", "model.int8.onnx", "report.md"} <= {p.name for p in (train_venv.work / "exported").iterdir()}


def test_train_install_imports_a_foreign_onnx_model(train_venv, tmp_path):
    foreign = write_classifier(tmp_path / "foreign.onnx", layout="NCHW", channels=3, size=(8, 8), classes=3)
    out = tmp_path / "imported"
    result = train_venv.edgecnn("export", str(foreign), "-o", str(out), "--name", "foreign", "--quantize", "none")
    assert result.returncode == 0, result.stderr
    check = train_venv.run("python", "-c", (
        "import sys, numpy as np, onnxruntime as ort\n"
        "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "p, = s.run(['probabilities'], {'images': np.zeros((2, 8, 8, 3), np.uint8)})\n"
        "print(p.shape, round(float(p.sum()), 3))\n"), str(out / "model.onnx"))
    assert check.stdout.strip() == "(2, 3) 2.0", check.stderr


@pytest.mark.parametrize("command", ["serve", "predict", "bench"])
def test_train_install_names_the_extra_the_serve_commands_need(train_venv, tmp_path, command):
    model = write_tiny_model(tmp_path / "tiny.onnx")
    line = one_line_error(train_venv.edgecnn(command, str(model)))
    assert line.startswith(f"error: `edgecnn {command}` needs the serve extra") and "pip install 'edgecnn[serve]'" in line

"""Every file flag of `predict`, `bench`, `classify` and `serve`: a missing file, a folder and an unreadable file
each end in one sentence naming the flag and the file (``error: --token-file nosuch.token: no such file``), with
exit code 1 and no traceback.

The in-process commands run through typer's CliRunner, `edgecnn serve` as a subprocess (it sets up signals and
logging). "Unreadable" is a Unix socket, which open() refuses even to root, and, where the tests do not run as
root, a file without read permission.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edgecnn.benchmarks.certs import issue, make_pki
from edgecnn.serve.cli import app
from PIL import Image
from typer.testing import CliRunner

from tests.helpers.models import write_tiny_model

FILE = "FILE"  # where the flag's file goes in a command line
KINDS = {  # the file given: (its name in the fixture folder, what the sentence says about it)
    "missing": ("nosuch.file", "no such file"),
    "folder": ("folder", "a folder, not a file"),
    "socket": ("socket", "cannot read it (No such device or address)"),
    "no-permission": ("no-permission", "cannot read it (permission denied)"),
}
# Root reads a file without read permission: that kind is tested only where the suite does not run as root
# (a parameter left out, not a skip: CI runs as root, and a skip there would read as a gap).
TESTED_KINDS = [kind for kind in KINDS if not (kind == "no-permission" and os.geteuid() == 0)]

# The command lines, "@x" a file of the fixture folder; the last flag before FILE is the one the sentence names.
CLIENT_FLAGS = [
    ["predict", "@photo.png", "--token-file", FILE],
    ["predict", "@photo.png", "--tls-ca", FILE],
    ["predict", "@photo.png", "--tls-cert", FILE, "--tls-key", "@leaf.key"],
    ["predict", "@photo.png", "--tls-cert", "@leaf.pem", "--tls-key", FILE],
    ["bench", "--server", "127.0.0.1:1", "--model", "tiny", "--token-file", FILE],
    ["bench", "--server", "127.0.0.1:1", "--model", "tiny", "--tls-ca", FILE],
    ["bench", "--server", "127.0.0.1:1", "--model", "tiny", "--tls-cert", FILE, "--tls-key", "@leaf.key"],
    ["bench", "--server", "127.0.0.1:1", "--model", "tiny", "--tls-cert", "@leaf.pem", "--tls-key", FILE],
    ["bench", "--compare", FILE, "@bench.json"],
    ["bench", "--compare", "@bench.json", FILE],
    ["classify", "@images", "--model", FILE, "--output", "@out.csv"],
]
SERVE_FLAGS = [
    ["serve", "@tiny.onnx", "--auth-token-file", FILE],
    ["serve", "@tiny.onnx", "--tls-cert", FILE, "--tls-key", "@leaf.key"],
    ["serve", "@tiny.onnx", "--tls-cert", "@leaf.pem", "--tls-key", FILE],
    ["serve", "@tiny.onnx", "--tls-cert", "@leaf.pem", "--tls-key", "@leaf.key", "--tls-client-ca", FILE],
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good files for the other flags, and a folder, a socket and an unreadable file for the flag under test."""
    root = tmp_path_factory.mktemp("flags")
    write_tiny_model(root / "tiny.onnx")
    (root / "images").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "0.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "photo.png")
    leaf = issue(make_pki(root, "ca"), root, "leaf", server=True)
    os.replace(leaf.cert, root / "leaf.pem")
    os.replace(leaf.key, root / "leaf.key")
    (root / "bench.json").write_text(json.dumps({"runs": []}))
    (root / "folder").mkdir()
    (root / "no-permission").write_text("secret")
    (root / "no-permission").chmod(0)
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(root / "socket"))
    yield root
    listening.close()


def command_line(args: list[str], root: Path, file: str) -> list[str]:
    return [str(root / file) if a == FILE else str(root / a[1:]) if a.startswith("@") else a for a in args]


def expected(args: list[str], root: Path, kind: str) -> str:
    name, why = KINDS[kind]
    return f"error: {flag_of(args)} {root / name}: {why}"


def flag_of(args: list[str]) -> str:
    """The flag whose value FILE is: the last one before it."""
    return next(a for a in reversed(args[:args.index(FILE)]) if a.startswith("--"))


def ids(cases: list[list[str]]) -> list[str]:
    return [f"{args[0]} {flag_of(args)}{' (2nd)' if args[-1] == FILE and '--compare' in args else ''}" for args in cases]


@pytest.mark.parametrize("kind", TESTED_KINDS)
@pytest.mark.parametrize("args", CLIENT_FLAGS, ids=ids(CLIENT_FLAGS))
def test_a_client_command_names_the_flag_and_the_file(files, args, kind):
    sentence = expected(args, files, kind)
    result = CliRunner().invoke(app, command_line(args, files, KINDS[kind][0]), env={"COLUMNS": "250"})
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}\n{result.output}"
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [sentence]


@pytest.mark.parametrize("kind", TESTED_KINDS)
@pytest.mark.parametrize("args", SERVE_FLAGS, ids=ids(SERVE_FLAGS))
def test_serve_names_the_flag_and_the_file(files, args, kind):
    sentence = expected(args, files, kind)
    command = [sys.executable, "-c", "from edgecnn.serve.cli import main; main()",
               *command_line(args, files, KINDS[kind][0]), "--port", "0", "--metrics-port", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == sentence


@pytest.mark.parametrize("name, says", [("nosuch", "no such folder"), ("photo.png", "a file, not a folder")])
def test_bench_images_must_be_a_folder(files, name, says):
    args = ["bench", "--server", "127.0.0.1:1", "--model", "tiny", "--images", str(files / name)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [f"error: --images {files / name}: {says}"]


@pytest.mark.parametrize("output, says", [
    ("folder", "a folder; give a file OUT.csv or OUT.parquet"),
    ("photo.png/out.csv", "photo.png is a file, not a folder"),
    ("out.txt", "the output must end in .csv or .parquet (got '.txt')"),
])
def test_classify_output_names_the_flag(files, output, says):
    args = ["classify", str(files / "images"), "--model", str(files / "tiny.onnx"), "--output", str(files / output)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    sentence = f"error: --output {files / output}: {says}".replace("photo.png is", f"{files / 'photo.png'} is")
    assert result.output.strip().splitlines() == [sentence]

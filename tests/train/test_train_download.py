"""Downloads with checksum checks, against an HTTP server the test starts on loopback."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from edgecnn.train import cifar, data
from edgecnn.train.data import DatasetError, DatasetSpec, load_splits
from edgecnn.train.download import RemoteFile

from tests.helpers.datasets import write_cifar_batches, write_idx_pair
from tests.helpers.models import random_images


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, folder it serves) of an HTTP server on 127.0.0.1."""
    root = tmp_path / "server"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", root
    server.shutdown()
    server.server_close()


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def serve_mnist_files(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("t10k", 4)):
        write_idx_pair(root, split, random_images(count, 28, 28, 1)[..., 0], rng.integers(0, 10, count), gz=True)


def trust_served_files(monkeypatch: pytest.MonkeyPatch, name: str, root: Path) -> None:
    """Point the catalogue's checksums for ``name`` at the files the test server holds."""
    public = data.PUBLIC[name]
    files = [RemoteFile(f.name, md5_of(root / f.name)) for f in public.files]
    monkeypatch.setitem(data.PUBLIC, name, data.PublicDataset(public.base_url, files, public.class_names))


def test_download_verifies_and_loads(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = served
    serve_mnist_files(root)
    trust_served_files(monkeypatch, "fashion-mnist", root)
    messages: list[str] = []
    target = tmp_path / "downloaded"
    train, test = load_splits(DatasetSpec(name="fashion-mnist", data_dir=str(target), mirror=url), log=messages.append)
    assert (len(train), len(test)) == (6, 4)
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in root.iterdir())
    assert any(url in m for m in messages)


def test_checksum_mismatch_saves_nothing(served, tmp_path: Path) -> None:
    url, root = served
    serve_mnist_files(root)  # not the official files, so the official checksums do not match
    target = tmp_path / "downloaded"
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz did not match its checksum"):
        load_splits(DatasetSpec(name="mnist", data_dir=str(target), mirror=url))
    assert list(target.iterdir()) == []


def test_offline_names_the_files_and_where_to_put_them(tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as error:
        load_splits(DatasetSpec(name="fashion-mnist", data_dir=str(target), mirror=f"http://127.0.0.1:{port}"))
    message = str(error.value)
    assert "could not be downloaded" in message and f"in {target}" in message
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert name in message
    assert not target.exists()


def test_missing_file_on_the_server(served, tmp_path: Path) -> None:
    url, _ = served
    with pytest.raises(DatasetError, match=r"could not be downloaded .*404"):
        load_splits(DatasetSpec(name="fashion-mnist", data_dir=str(tmp_path / "d"), mirror=url))


def test_cifar_archive_download_and_unpack(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = served
    batches = tmp_path / "cifar-10-batches-bin"
    write_cifar_batches(batches)
    with tarfile.open(root / cifar.ARCHIVE, "w:gz") as tar:
        tar.add(batches, arcname=batches.name)
    trust_served_files(monkeypatch, "cifar10", root)
    train, test = load_splits(DatasetSpec(name="cifar10", data_dir=str(tmp_path / "data"), mirror=url))
    assert train.images.shape == (20, 32, 32, 3) and len(test) == 4

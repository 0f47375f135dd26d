"""A model repository NAME/VERSION/model.onnx: several models and versions, the highest by default."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from edgecnn.serve.client import InferenceClient
from edgecnn.serve.repository import find_models, version_key
from edgecnn.serve.server import start_server

from tests.helpers.models import random_images, reference_outputs, write_tiny_model
from tests.helpers.serving import settings_for

VERSIONS = {"digits": ("1", "2", "10"), "letters": ("3",)}


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    for seed, (name, versions) in enumerate(VERSIONS.items()):
        for version in versions:
            # The file's own name/version differ: the repository's folders decide.
            path = root / name / version / "model.onnx"
            write_tiny_model(path, name="exported", version="0", seed=seed * 100 + int(version))
    (root / "notes").mkdir()
    (root / "digits" / "config.json").write_text('{"version_policy": {"all": {}}}')  # the default serves the latest
    return root


@pytest.fixture(scope="module")
def client(repository):
    with start_server(settings_for(repository, metrics=False)) as server, InferenceClient(server.address) as client:
        yield client


def test_versions_order_numerically():
    assert sorted(["10", "2", "1", "beta"], key=version_key) == ["beta", "1", "2", "10"]


def test_find_models_reads_name_and_version_from_folders(repository):
    found = {(s.name, s.version) for s in find_models(repository)}
    assert found == {("digits", "1"), ("digits", "2"), ("digits", "10"), ("letters", "3")}


def test_empty_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="NAME/VERSION/model.onnx"):
        find_models(tmp_path)


def test_by_default_only_the_latest_version_is_served(repository):
    with start_server(settings_for(repository, metrics=False, model_control_mode="none")) as server:
        assert server.server.models.versions("digits") == ["1", "2", "10"]  # config.json: all
    (repository / "digits" / "config.json").rename(repository / "digits" / "config.off")
    try:
        with start_server(settings_for(repository, metrics=False)) as server:
            assert server.server.models.versions("digits") == ["10"]
    finally:
        (repository / "digits" / "config.off").rename(repository / "digits" / "config.json")


def test_metadata_lists_versions_and_the_empty_version_is_the_highest(client):
    metadata = client.model_metadata("digits")
    assert list(metadata.versions) == ["1", "2", "10"]
    assert client.infer("digits", random_images(1)).model_version == "10"


@pytest.mark.parametrize("name, version", [("digits", "1"), ("digits", "2"), ("digits", "10"), ("letters", "3")])
def test_each_model_version_serves_its_own_file(client, repository, name, version):
    images = random_images(2, seed=5)
    result = client.infer(name, images, version=version)
    assert (result.model_name, result.model_version) == (name, version)
    expected = reference_outputs(repository / name / version / "model.onnx", images)["logits"]
    np.testing.assert_allclose(result.outputs["logits"], expected, rtol=1e-6)


@pytest.mark.parametrize(
    "name, version, message",
    [
        ("digits", "3", "versions: 1, 2, 10"),
        ("exported", "", "models: digits, letters"),
        ("", "", "a model name is required"),
    ],
)
def test_unknown_model_or_version_is_not_found(client, name, version, message):
    with pytest.raises(grpc.RpcError) as error:
        client.infer(name, random_images(1), version=version)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert message in error.value.details()
    assert not client.model_ready(name, version)

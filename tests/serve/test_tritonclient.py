"""Triton's own client, unchanged, against our server: proof that standard OIP clients work.

tritonclient registers its own `inference.*` protobuf messages, which cannot share a process
with ours, so it runs in a child process like any real client would.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers.models import random_images, reference_outputs
from tests.helpers.serving import encode

CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as tc

address, images_path, encoded_path = sys.argv[1:]
client = tc.InferenceServerClient(url=address)
images = np.load(images_path)
out = {
    "ready": [client.is_server_live(), client.is_server_ready(), client.is_model_ready("tiny")],
    "extensions": list(client.get_server_metadata().extensions),
    "inputs": [[i.name, i.datatype, list(i.shape)] for i in client.get_model_metadata("tiny").inputs],
}
pixels = tc.InferInput("images", list(images.shape), "UINT8")
pixels.set_data_from_numpy(images)
outputs = [tc.InferRequestedOutput("logits"), tc.InferRequestedOutput("probabilities", class_count=2)]
result = client.infer("tiny", [pixels], outputs=outputs)
out["logits"] = result.as_numpy("logits").tolist()
out["classes"] = [[s.decode() for s in row] for row in result.as_numpy("probabilities")]
out["batch_size"] = result.get_response().parameters["batch_size"].int64_param

encoded = tc.InferInput("images", [2], "BYTES")
encoded.set_data_from_numpy(np.load(encoded_path, allow_pickle=True))
result = client.infer("tiny", [encoded], outputs=[tc.InferRequestedOutput("probabilities")])
out["encoded_probabilities"] = result.as_numpy("probabilities").tolist()
print(json.dumps(out))
"""


def test_tritonclient_works_unchanged(server, tiny_model, tmp_path):
    images = random_images(3, seed=21)
    np.save(tmp_path / "images.npy", images)
    encoded = np.array([encode(random_images(1, 12, 12, 3, seed=i)[0]) for i in range(2)], dtype=np.object_)
    np.save(tmp_path / "encoded.npy", encoded, allow_pickle=True)
    completed = subprocess.run(
        [sys.executable, "-c", CLIENT, server.address, str(tmp_path / "images.npy"), str(tmp_path / "encoded.npy")],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    out = json.loads(completed.stdout)

    assert out["ready"] == [True, True, True]
    assert "classification" in out["extensions"]
    assert out["inputs"] == [["images", "UINT8", [-1, 8, 8, 1]]]
    reference = reference_outputs(tiny_model, images)
    np.testing.assert_allclose(out["logits"], reference["logits"], rtol=1e-6)
    for row, strings in zip(reference["probabilities"], out["classes"]):
        score, index, label = strings[0].split(":")
        assert int(index) == int(np.argmax(row)) and label == ["zero", "one", "two"][int(index)]
        assert float(score) == pytest.approx(float(row.max()), abs=1e-6)
    assert out["batch_size"] >= 3
    assert np.allclose(np.sum(out["encoded_probabilities"], axis=1), 1.0, atol=1e-5)


SECURE_CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as tc

address, ca, cert, key, token = sys.argv[1:]
client = tc.InferenceServerClient(url=address, ssl=True, root_certificates=ca, private_key=key, certificate_chain=cert)
pixels = tc.InferInput("images", [1, 8, 8, 1], "UINT8")
pixels.set_data_from_numpy(np.zeros((1, 8, 8, 1), np.uint8))
out = {"live": client.is_server_live()}  # health stays open without a token
result = client.infer("tiny", [pixels], headers={"authorization": "Bearer " + token})
out["logits"] = list(result.as_numpy("logits").shape)
try:
    client.infer("tiny", [pixels])
except tc.InferenceServerException as error:
    out["no_token"] = error.status()
print(json.dumps(out))
"""


def test_tritonclient_over_mutual_tls_with_a_token_as_the_readme_shows(tiny_model, tmp_path):
    from edgecnn.benchmarks.certs import issue, make_pki
    from edgecnn.serve.server import start_server

    from tests.helpers.serving import settings_for

    pki = make_pki(tmp_path)
    server_leaf, client_leaf = issue(pki, tmp_path, "localhost", server=True), issue(pki, tmp_path, "me", server=False)
    token = "readme-example-token-000000000001"
    (tmp_path / "tokens.txt").write_text(f"{token} inference\n")
    settings = settings_for(tiny_model, tls_cert=server_leaf.cert, tls_key=server_leaf.key, tls_client_ca=pki.cert,
                            auth_token_file=tmp_path / "tokens.txt")
    with start_server(settings) as running:
        completed = subprocess.run(
            [sys.executable, "-c", SECURE_CLIENT, f"localhost:{running.port}", str(pki.cert), str(client_leaf.cert),
             str(client_leaf.key), token], capture_output=True, text=True, timeout=120,
        )
    assert completed.returncode == 0, completed.stderr
    out = json.loads(completed.stdout)
    assert out == {"live": True, "logits": [1, 3], "no_token": "StatusCode.UNAUTHENTICATED"}

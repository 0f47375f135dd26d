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

from tests.serve.support import encode
from tests.tiny_models import random_images, reference_outputs

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

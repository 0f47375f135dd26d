"""The committed stubs match protos/grpc_predict_v2.proto, which keeps the published OIP names and numbers."""

from __future__ import annotations

import subprocess
import sys

from edgecnn.protos import grpc_predict_v2_pb2 as pb


def test_committed_stubs_match_the_proto():
    result = subprocess.run(
        [sys.executable, "-m", "edgecnn.protos.generate", "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_proto_keeps_the_published_open_inference_protocol_names():
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert [m.name for m in service.methods] == [
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
    ]
    request = pb.ModelInferRequest.DESCRIPTOR.fields_by_name
    response = pb.ModelInferResponse.DESCRIPTOR.fields_by_name
    assert (request["raw_input_contents"].number, response["raw_output_contents"].number) == (7, 6)
    assert [(f.name, f.number) for f in pb.InferParameter.DESCRIPTOR.fields] == [
        ("bool_param", 1), ("int64_param", 2), ("string_param", 3),
    ]

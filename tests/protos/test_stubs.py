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
        "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
    ]
    request = pb.ModelInferRequest.DESCRIPTOR.fields_by_name
    response = pb.ModelInferResponse.DESCRIPTOR.fields_by_name
    assert (request["raw_input_contents"].number, response["raw_output_contents"].number) == (7, 6)
    assert [(f.name, f.number) for f in pb.InferParameter.DESCRIPTOR.fields] == [
        ("bool_param", 1), ("int64_param", 2), ("string_param", 3),
    ]


REPOSITORY_MESSAGES = ("RepositoryIndexRequest", "RepositoryIndexResponse", "RepositoryModelLoadRequest",
                       "RepositoryModelLoadResponse", "RepositoryModelUnloadRequest", "RepositoryModelUnloadResponse",
                       "ModelRepositoryParameter")
FIELDS_OF = """
import json, sys
from google.protobuf import descriptor_pb2
def fields(d):
    return {f.name: [f.number, f.type, f.label, f.message_type.full_name if f.message_type else ""]
            for f in d.fields} | {"nested." + n.name: fields(n) for n in d.nested_types}
module = __import__(sys.argv[1], fromlist=["DESCRIPTOR"])
print(json.dumps({n: fields(module.DESCRIPTOR.message_types_by_name[n]) for n in sys.argv[2:]}))
"""


def test_repository_extension_matches_tritons_messages_field_by_field():
    """Triton's own generated messages (tritonclient's, in a child process: both register `inference.*`)."""
    import json
    import subprocess
    import sys

    def fields(module: str) -> dict:
        done = subprocess.run([sys.executable, "-c", FIELDS_OF, module, *REPOSITORY_MESSAGES],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert fields("edgecnn.protos.grpc_predict_v2_pb2") == fields("tritonclient.grpc.service_pb2")

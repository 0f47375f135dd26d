"""Loading a model: metadata and graph must agree, providers never fall back silently."""

from __future__ import annotations

from dataclasses import replace

import onnx
import onnxruntime as ort
import pytest

from edgecnn.export.metadata import MetadataError, ModelMetadata, write_metadata
from edgecnn.serve.model import ProviderUnavailable, load_model
from tests.serve.support import settings_for


def test_loaded_model_reports_its_provider_and_wire_format(tiny_model):
    model = load_model(tiny_model, settings_for(tiny_model))
    assert (model.name, model.version, model.provider) == ("tiny", "1", "CPUExecutionProvider")
    assert model.image_shape == (8, 8, 1)
    assert model.output_datatypes() == {"logits": "FP32", "probabilities": "FP32"}


def test_model_without_metadata_is_refused(tiny_model, tmp_path):
    proto = onnx.load(str(tiny_model))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(MetadataError, match="edgecnn export"):
        load_model(tmp_path / "bare.onnx", settings_for(tiny_model))


def test_labels_must_match_the_graph_outputs(tiny_model, tmp_path):
    proto = onnx.load(str(tiny_model))
    meta = ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props})
    write_metadata(proto, replace(meta, labels=["a", "b"]))
    onnx.save(proto, str(tmp_path / "two_labels.onnx"))
    with pytest.raises(ValueError, match="3 classes but the metadata lists 2 labels"):
        load_model(tmp_path / "two_labels.onnx", settings_for(tiny_model))


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_cuda_is_an_error_where_unavailable_and_auto_runs_on_cpu(tiny_model):
    with pytest.raises(ProviderUnavailable, match="use --provider cpu"):
        load_model(tiny_model, settings_for(tiny_model, provider="cuda"))
    assert load_model(tiny_model, settings_for(tiny_model, provider="auto")).provider == "CPUExecutionProvider"

"""Loading a model: metadata and graph must agree, providers never fall back silently."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgecnn.export.metadata import MetadataError, ModelMetadata, write_metadata
from edgecnn.serve import model as model_module
from edgecnn.serve.model import ProviderUnavailable, load_model

from tests.helpers.models import random_images, reference_outputs
from tests.helpers.serving import settings_for, wait_until


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


def test_small_batches_run_single_threaded_below_the_threshold_with_the_same_outputs(tiny_model):
    model = load_model(tiny_model, settings_for(tiny_model, intra_op_threads=2, single_thread_below=4))
    assert model.single_thread_below == 4
    assert model.single_thread_session.get_session_options().intra_op_num_threads == 1
    assert model.session.get_session_options().intra_op_num_threads == 2
    used = []
    for name in ("session", "single_thread_session"):
        session = getattr(model, name)
        run = session.run
        session.run = lambda *args, _run=run, _name=name: used.append(_name) or _run(*args)
    for size in (1, 3, 4, 8):
        images = random_images(size, seed=size)
        logits, probabilities = model.run(images)
        reference = reference_outputs(tiny_model, images)
        np.testing.assert_allclose(logits, reference["logits"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(probabilities, reference["probabilities"], rtol=1e-5, atol=1e-6)
    assert used == ["single_thread_session", "single_thread_session", "session", "session"]


class _TimedSessions:
    """Stands in for a loaded model when measuring the threshold: each run of a session on a batch of a
    given size takes the scripted seconds, so the threshold it yields is known in advance."""

    def __init__(self, single: dict[int, float], every_core: dict[int, float]):
        self.single_thread_session, self.session = "single", "every core"
        self.seconds = {"single": single, "every core": every_core}
        self.sizes_timed: list[int] = []

    def blank_feed(self, size: int = 1) -> int:
        return size

    def timed_run(self, session: str, size: int) -> float:
        self.sizes_timed.append(size)
        return self.seconds[session][size]


@pytest.mark.parametrize("single, every_core, below", [
    # the multi-threaded session is faster from batch 4 on: batches of 1 and 2 run single-threaded
    ({1: 1.0, 2: 2.0, 4: 4.0}, {1: 1.5, 2: 2.5, 4: 3.0}, 4),
    # faster from the first batch: no single-threaded batches at all
    ({1: 2.0}, {1: 1.0}, 1),
    # equal is not faster: the single thread keeps batch 1, the pool wins at 2
    ({1: 1.0, 2: 2.0}, {1: 1.0, 2: 1.0}, 2),
    # the single thread wins up to the largest batch: max_batch_size + 1
    ({1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0}, {1: 3.0, 2: 3.0, 4: 5.0, 8: 9.0}, 9),
])
def test_single_thread_threshold_is_the_first_batch_size_the_thread_pool_wins(single, every_core, below):
    timed = _TimedSessions(single, every_core)
    assert model_module._single_thread_wins_below(timed, max_batch_size=8, budget_s=60.0) == below
    assert sorted(set(timed.sizes_timed)) == sorted(single)  # it stops at the first size the pool wins


@pytest.mark.parametrize("below", [1, 4, 9])
def test_single_thread_threshold_is_measured_at_load_and_1_turns_it_off(tiny_model, monkeypatch, below):
    measure = model_module._single_thread_wins_below
    calls = []
    # the real measurement runs on both sessions of the loaded model; its answer is then replaced
    monkeypatch.setattr(model_module, "_single_thread_wins_below",
                        lambda model, max_batch_size: calls.append(measure(model, max_batch_size)) or below)
    measured = load_model(tiny_model, settings_for(tiny_model, intra_op_threads=2, max_batch_size=8))
    assert len(calls) == 1 and calls[0] in (1, 2, 4, 8, 9)  # a batch size from 1 to max + 1 on this machine
    assert measured.single_thread_below == below
    assert (measured.single_thread_session is None) == (below == 1)
    monkeypatch.setattr(model_module, "_single_thread_wins_below", measure)
    off = load_model(tiny_model, settings_for(tiny_model, intra_op_threads=2, single_thread_below=1))
    assert off.single_thread_session is None and off.single_thread_below == 1
    one_thread = load_model(tiny_model, settings_for(tiny_model, intra_op_threads=1))
    assert one_thread.single_thread_session is None  # the main session is already single-threaded


def test_each_instance_runs_on_its_own_session_when_runs_span_threads(tiny_model):
    settings = settings_for(tiny_model, instances=2, intra_op_threads=2, single_thread_below=1)
    model = load_model(tiny_model, settings)
    assert model.instance_sessions == []  # until the server has started
    model.open_instance_sessions_in_background(settings)
    wait_until(lambda: model.instance_sessions, what="the second instance's session, opened in the background")
    assert len(model.instance_sessions) == 1 and model.instance_sessions[0] is not model.session
    images = random_images(3)
    for instance in (0, 1):
        np.testing.assert_allclose(model.run(images, instance)[0], reference_outputs(tiny_model, images)["logits"],
                                   rtol=1e-5, atol=1e-6)
    one_thread = settings_for(tiny_model, instances=2, intra_op_threads=1)
    shared = load_model(tiny_model, one_thread)
    shared.open_instance_sessions_in_background(one_thread)  # single-threaded runs share one session
    assert shared.instance_sessions == []


def test_a_model_slow_at_batch_one_gets_no_single_threaded_session(tiny_model, monkeypatch):
    monkeypatch.setattr(model_module, "PARALLEL_ALWAYS_PAYS_S", 0.0)  # every model counts as heavy
    model = load_model(tiny_model, settings_for(tiny_model, intra_op_threads=2))
    assert model.single_thread_session is None and model.single_thread_below == 1

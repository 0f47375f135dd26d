"""The metadata contract: the int8 keys (recipe, CPU path) round-trip, and files written before them still read."""

from __future__ import annotations

from pathlib import Path

import onnx
from edgecnn.export.metadata import PREFIX, ModelMetadata, read_metadata, write_metadata

from tests.helpers.models import write_tiny_model

BASE = dict(name="tiny", version="1", labels=["a", "b"], height=8, width=8, channels=1)


def test_int8_keys_round_trip():
    meta = ModelMetadata(**BASE, variant="int8", int8_recipe="u8s8", cpu_path="avx2", cpu_model="Some CPU")
    props = meta.to_props()
    assert props[PREFIX + "int8_recipe"] == "u8s8" and props[PREFIX + "cpu_path"] == "avx2"
    assert ModelMetadata.from_props(props) == meta


def test_props_without_the_int8_keys_still_read():
    props = ModelMetadata(**BASE).to_props()
    for key in ("int8_recipe", "cpu_path", "cpu_model"):
        del props[PREFIX + key]
    meta = ModelMetadata.from_props(props)
    assert (meta.int8_recipe, meta.cpu_path, meta.cpu_model) == ("", "", "")
    assert meta.name == "tiny" and meta.labels == ["a", "b"]


def test_a_file_written_before_the_int8_keys_still_reads(tmp_path: Path):
    path = write_tiny_model(tmp_path / "old.onnx", variant="int8")
    model = onnx.load(str(path))
    old_keys = [p for p in model.metadata_props if p.key.removeprefix(PREFIX) not in ("int8_recipe", "cpu_path", "cpu_model")]
    del model.metadata_props[:]
    model.metadata_props.extend(old_keys)
    onnx.save(model, str(path))
    meta = read_metadata(path)
    assert meta.variant == "int8" and meta.cpu_path == "" and meta.int8_recipe == ""


def test_write_metadata_replaces_the_int8_keys(tmp_path: Path):
    model = onnx.load(str(write_tiny_model(tmp_path / "m.onnx")))
    write_metadata(model, ModelMetadata(**BASE, cpu_path="avx2"))
    write_metadata(model, ModelMetadata(**BASE, cpu_path="avx512_vnni"))
    values = [p.value for p in model.metadata_props if p.key == PREFIX + "cpu_path"]
    assert values == ["avx512_vnni"]

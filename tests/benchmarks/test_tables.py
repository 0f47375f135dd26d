"""What the bench tables tell a reader beyond the figures: the machine's int8 path and where each int8
file's recipe was chosen (a recipe chosen on another CPU was never raced against the others here)."""

from __future__ import annotations

from edgecnn.benchmarks.tables import device_line, recipes_caption

DEVICE = {"cpu_model": "Some CPU", "cpu_path": "avx512_vnni", "usable_cores": 2, "memory_gib": 4.0, "os": "Linux",
          "onnxruntime": "1.32.0", "onnxruntime_providers": ["CPUExecutionProvider"], "gpus": []}


def test_the_device_line_names_the_int8_path():
    assert "Some CPU (int8 path: avx512_vnni)" in device_line(DEVICE)
    assert "int8 path" not in device_line({**DEVICE, "cpu_path": ""})  # reports written before it was recorded


def test_the_caption_names_each_int8_files_recipe_and_the_cpu_it_was_chosen_on():
    rows = [
        {"model": "/m/model.onnx", "int8_recipe": "", "recipe_cpu_path": ""},
        {"model": "/m/model.int8.onnx", "int8_recipe": "u8s8-float-stem", "recipe_cpu_path": "avx2"},
        {"model": "/m/model.int8.onnx", "int8_recipe": "u8s8-float-stem", "recipe_cpu_path": "avx2"},
        {"model": "/n/old.int8.onnx", "int8_recipe": "u8s8", "recipe_cpu_path": ""},
    ]
    assert recipes_caption(rows) == ("model.int8.onnx: int8 recipe u8s8-float-stem, chosen on avx2; "
                                      "old.int8.onnx: int8 recipe u8s8, chosen on an unrecorded CPU path")
    assert recipes_caption(rows[:1]) == ""

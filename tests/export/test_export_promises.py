"""What an export promises to leave behind when a check fails, and how it chooses the int8 recipe.

- fp32 parity: the fp32 model must give the reference's logits (max difference 1e-4, every top-1 the
  same), or nothing is written (README, "or nothing is written").
- int8: the fastest recipe within --max-accuracy-drop is kept; recipes within 3% of the fastest are tied
  and the tie goes to the one listed first; when every recipe is over the bound there is no int8 file.

Parity is broken with real graphs that differ from their reference (a nudged weight, a shifted mean),
and every recipe is pushed over the bound by a real quantisation calibrated on blank images.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from edgecnn.export import exporter, importer, quantize
from edgecnn.export.pipeline import _choose_recipe
from edgecnn.export.report import RecipeResult
from edgecnn.export.settings import ExportSettings

from tests.helpers.exporting import ACCURACY_BOUND, FAST_TIMING, run_export
from tests.helpers.foreign_models import write_classifier

pytestmark = pytest.mark.slow

EARLIER = b"from an earlier export"


def onnx_files(out_dir: Path) -> list[str]:
    return sorted(p.name for p in out_dir.glob("*.onnx*"))


def report_of(out_dir: Path) -> dict:
    return json.loads((out_dir / "report.json").read_text())


def earlier_export(out_dir: Path) -> Path:
    """An output folder holding every file an earlier export wrote: a failed export must not leave them."""
    out_dir.mkdir()
    for name in ("model.onnx", "model.int8.onnx"):
        (out_dir / name).write_bytes(EARLIER)
    return out_dir


# --- fp32 parity fails: nothing is written ----------------------------------------------------------


def test_a_run_export_whose_fp32_graph_differs_from_pytorch_writes_no_model(run_dir: Path, tmp_path: Path, monkeypatch):
    """The exported graph computes something else than the trained model: no variant is written."""
    wrap = exporter.wrap_for_export

    def drifted(model, normalisation, image_shape):
        wrapper = wrap(model, normalisation, image_shape)  # holds its own copy of the model
        with torch.no_grad():
            list(wrapper.model.parameters())[-1].add_(1e-2)  # every logit moves 0.01: 100x the tolerance
        return wrapper

    monkeypatch.setattr(exporter, "wrap_for_export", drifted)
    out_dir = earlier_export(tmp_path / "out")
    result = run_export(run_dir, "-o", out_dir, "--quantize", "int8", "--max-accuracy-drop", ACCURACY_BOUND, *FAST_TIMING)
    assert result.exit_code == 1, result.output
    assert "fp32 failed" in result.output and "max |logit difference| vs PyTorch" in result.output.replace("\n", " ")
    assert onnx_files(out_dir) == []  # neither the fp32 model nor an int8 built from it, nor the earlier files
    report = report_of(out_dir)
    fp32 = report["variants"][0]
    assert (fp32["variant"], fp32["status"]) == ("fp32", "failed")
    assert fp32["max_abs_logit_diff"] > 1e-4
    assert report["serve_file"] == ""


def test_an_import_whose_wrapped_graph_differs_from_the_original_writes_nothing(tmp_path: Path, monkeypatch):
    """The wrapped graph preprocesses differently from the original's documented preprocessing: one
    sentence, and the output folder (with an earlier export in it) is left as it was."""
    wrap = importer.wrap

    def shifted(original, image_input, preprocessing, head, classes, fold=True):
        moved = dataclasses.replace(preprocessing, mean=preprocessing.mean + 0.05)
        return wrap(original, image_input, moved, head, classes, fold=fold)

    monkeypatch.setattr(importer, "wrap", shifted)
    out_dir = earlier_export(tmp_path / "out")
    result = run_export(write_classifier(tmp_path / "m.onnx"), "-o", out_dir, *FAST_TIMING)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "does not reproduce m.onnx on the same pixels" in lines[0]
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.int8.onnx", "model.onnx"]
    assert all(p.read_bytes() == EARLIER for p in out_dir.iterdir())


def test_an_import_whose_wrapped_graph_differs_into_a_new_folder_creates_none(tmp_path: Path, monkeypatch):
    wrap = importer.wrap

    def shifted(original, image_input, preprocessing, head, classes, fold=True):
        return wrap(original, image_input, dataclasses.replace(preprocessing, scale=preprocessing.scale * 1.01),
                    head, classes, fold=fold)

    monkeypatch.setattr(importer, "wrap", shifted)
    out_dir = tmp_path / "out"
    result = run_export(write_classifier(tmp_path / "m.onnx"), "-o", out_dir, *FAST_TIMING)
    assert result.exit_code == 1, result.output
    assert "does not reproduce" in result.output
    assert not out_dir.exists()


# --- every int8 recipe over the bound: no int8 file ----------------------------------------------------


def test_no_int8_file_when_every_recipe_is_over_the_accuracy_bound(run_dir: Path, tmp_path: Path, monkeypatch):
    """Every recipe is really quantised, but calibrated on blank images: each loses far more than the bound."""
    calibrate = quantize.quantize_int8

    def calibrated_on_blank_images(model_path, target, images, recipe, method):
        return calibrate(model_path, target, np.zeros_like(images), recipe, method)

    monkeypatch.setattr(quantize, "quantize_int8", calibrated_on_blank_images)
    out_dir = earlier_export(tmp_path / "out")
    result = run_export(run_dir, "-o", out_dir, "--quantize", "int8", "--max-accuracy-drop", ACCURACY_BOUND, *FAST_TIMING)
    assert result.exit_code == 1, result.output
    assert "int8 failed" in result.output
    assert onnx_files(out_dir) == ["model.onnx"]  # fp32 ships; the earlier int8 file is gone too
    assert (out_dir / "model.onnx").read_bytes() != EARLIER
    report = report_of(out_dir)
    recipes = report["recipes"]
    assert [r["name"] for r in recipes] == [r.name for r in quantize.INT8_RECIPES]
    assert all(not r["error"] and r["accuracy_change"] < -ACCURACY_BOUND for r in recipes)
    assert not any(r["within_accuracy_bound"] for r in recipes)
    assert report["chosen_recipe"] == ""
    assert report["recipe_choice"].startswith(f"every int8 recipe loses more than {ACCURACY_BOUND * 100:.2f} points")
    assert [(v["variant"], v["status"]) for v in report["variants"]] == [("fp32", "ok"), ("int8", "failed")]
    assert report["serve_file"] == "model.onnx"


# --- the recipe choice ------------------------------------------------------------------------------------


SETTINGS = ExportSettings(max_accuracy_drop=0.005)


def recipe(name: str, speedup: float = 1.0, *, throughput: float | None = None, change: float = 0.0,
           error: str = "") -> RecipeResult:
    """A measured recipe: ``speedup`` at batch 1 (and at the large batch, unless ``throughput`` is given)."""
    if error:
        return RecipeResult(name, "why", error=error)
    return RecipeResult(
        name, "why", accuracy_change=change, speedup_latency=speedup,
        speedup_throughput=speedup if throughput is None else throughput,
        within_accuracy_bound=change >= -SETTINGS.max_accuracy_drop,
    )


def chosen(recipes: list[RecipeResult]) -> str | None:
    result, _ = _choose_recipe(recipes, SETTINGS)
    return None if result is None else result.name


def test_the_fastest_recipe_within_the_bound_wins():
    recipes = [recipe("a", 1.2), recipe("b", 1.6, change=-0.01), recipe("c", 1.4, change=-0.004), recipe("d", 1.1)]
    result, reason = _choose_recipe(recipes, SETTINGS)
    assert result is recipes[2]  # b is faster but loses a point
    assert reason.startswith("c won: the fastest within the accuracy bound")
    assert "over the accuracy bound: b" in reason
    assert "slower (geometric mean of both speedups): a 1.20x, d 1.10x" in reason


def test_recipes_are_ranked_by_the_geometric_mean_of_both_speedups():
    # a: 2.0x at batch 1 but 0.5x at the large batch (geometric mean 1.0); b: 1.2x at both.
    assert chosen([recipe("a", 2.0, throughput=0.5), recipe("b", 1.2)]) == "b"
    assert chosen([recipe("a", 1.5, throughput=1.5), recipe("b", 2.0, throughput=1.0)]) == "a"  # 1.5 > 1.41


def test_recipes_within_three_percent_of_the_fastest_are_tied_and_the_first_listed_wins():
    result, reason = _choose_recipe([recipe("plain", 1.00), recipe("fancy", 1.02)], SETTINGS)
    assert result.name == "plain"
    assert "tied within 3% with fancy, listed later" in reason
    assert chosen([recipe("plain", 1.00), recipe("fancy", 1.04)]) == "fancy"  # more than 3% faster: not a tie
    assert chosen([recipe("fancy", 1.02), recipe("plain", 1.00)]) == "fancy"  # the first listed, not the slower


def test_a_recipe_exactly_at_the_bound_is_within_it():
    assert chosen([recipe("a", 1.5, change=-0.005), recipe("b", 1.0)]) == "a"
    assert chosen([recipe("a", 1.5, change=-0.0051), recipe("b", 1.0)]) == "b"


def test_no_recipe_is_chosen_when_every_one_is_over_the_bound():
    result, reason = _choose_recipe([recipe("a", 2.0, change=-0.02), recipe("b", 1.5, change=-0.008)], SETTINGS)
    assert result is None
    assert reason == "every int8 recipe loses more than 0.50 points vs PyTorch; the best, b, loses 0.80"


def test_a_recipe_that_failed_to_quantise_is_never_chosen():
    assert chosen([recipe("broken", error="ValueError: no"), recipe("slow", 0.9)]) == "slow"
    result, reason = _choose_recipe([recipe("a", error="ValueError: x"), recipe("b", error="KeyError: y")], SETTINGS)
    assert result is None
    assert reason == "no int8 recipe could be quantised: a: ValueError: x; b: KeyError: y"


def test_no_recipes_no_choice():
    assert _choose_recipe([], SETTINGS) == (None, "")

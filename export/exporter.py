"""`edgecnn export` from start to end: run dir -> fp32 ONNX -> variants -> evaluated, timed, reported.

Everything is built in a staging folder inside OUT_DIR and renamed into place at the end, so
an interrupted or failed export never leaves a half-written .onnx behind, and a variant that
fails its accuracy bound is never written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from torch import nn

from edgecnn.export import evaluate, quantize
from edgecnn.export.graph import export_onnx, wrap_for_export
from edgecnn.export.metadata import ModelMetadata, write_metadata
from edgecnn.export.report import ExportReport, RecipeResult, VariantResult
from edgecnn.export.settings import ExportError, ExportSettings
from edgecnn.train.checkpoint import RUN_JSON, RunDirError, load_run
from edgecnn.train.data import DatasetError
from edgecnn.train.evaluate import load_run_splits
from edgecnn.train.normalisation import Normalisation

Log = Callable[[str], None]

OUTPUT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx", "dynamic": "model.dynamic.onnx"}
PARITY_TOLERANCE = 1e-4  # max |logit difference| between the fp32 ONNX model and PyTorch
PYTORCH_BATCH = 256
TIE_MARGIN = 0.03  # int8 recipes this close to the fastest count as equally fast
FOLD_DESCRIPTIONS = {
    "weights+bias": "(x/255 - mean)/std folded into the first conv's weights and bias; the graph feeds it raw pixels",
    "weights": "1/(255*std) folded into the first conv's weights; the graph subtracts 255*mean (the conv pads)",
    "none": "(x/255 - mean)/std computed in the graph (the model does not start with a foldable conv)",
}


@dataclass
class ExportInputs:
    """What an export needs, loaded: the trained model, its run record, and real images."""

    model: nn.Module
    info: dict[str, Any]
    run_dir: Path
    calibration_images: np.ndarray  # uint8 NHWC training images
    test_images: np.ndarray  # uint8 NHWC
    test_labels: np.ndarray
    test_set: str  # where the test images come from, in words

    @property
    def image_shape(self) -> tuple[int, int, int]:
        shape = self.info["input"]
        return int(shape["height"]), int(shape["width"]), int(shape["channels"])


def export_run(
    run_dir: str | Path, out_dir: str | Path, settings: ExportSettings = ExportSettings(), log: Log = lambda _: None
) -> ExportReport:
    """Export ``run_dir`` to ``out_dir`` and write the report there; raises ExportError for bad input."""
    settings.check()
    recipes = select_recipes(settings.int8_recipes)
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    loaded = _load_run(run_dir)
    created = not out_dir.exists()
    staging = _make_staging_dir(out_dir)
    try:
        inputs = _load_images(loaded.model, loaded.info, run_dir, settings)
        return _export(inputs, out_dir, staging, settings, recipes, log)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()


def select_recipes(names: tuple[str, ...]) -> tuple[quantize.Int8Recipe, ...]:
    if not names:
        return quantize.INT8_RECIPES
    unknown = [n for n in names if n not in quantize.RECIPES_BY_NAME]
    if unknown:
        known = ", ".join(quantize.RECIPES_BY_NAME)
        raise ExportError(f"unknown int8 recipe {', '.join(unknown)}; the recipes are: {known}")
    return tuple(quantize.RECIPES_BY_NAME[n] for n in names)


# --- loading ------------------------------------------------------------------------------


def _load_run(run_dir: Path):
    try:
        return load_run(run_dir)
    except RunDirError as exc:
        raise ExportError(str(exc)) from None


def _load_images(model: nn.Module, info: dict[str, Any], run_dir: Path, settings: ExportSettings) -> ExportInputs:
    if "dataset" not in info:  # load_run has checked everything else the export needs
        raise ExportError(f"{run_dir / RUN_JSON} does not record its dataset: train it again")
    try:
        train, test = load_run_splits(info)
    except DatasetError as exc:
        raise ExportError(f"cannot load the run's dataset for calibration and evaluation: {exc}") from None
    order = np.random.default_rng(0).permutation(len(train))[: settings.calibration_size]
    evaluated = slice(0, settings.evaluation_size)
    return ExportInputs(
        model=model,
        info=info,
        run_dir=run_dir,
        calibration_images=np.ascontiguousarray(train.images[np.sort(order)]),
        test_images=np.ascontiguousarray(test.images[evaluated]),
        test_labels=test.labels[evaluated],
        test_set=test.source,
    )


def _make_staging_dir(out_dir: Path) -> Path:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    except OSError as exc:
        raise ExportError(f"cannot write to the output folder {out_dir}: {exc.strerror or exc}") from None


# --- the export ---------------------------------------------------------------------------


def _export(
    inputs: ExportInputs,
    out_dir: Path,
    staging: Path,
    settings: ExportSettings,
    recipes: tuple[quantize.Int8Recipe, ...],
    log: Log,
) -> ExportReport:
    info = inputs.info
    name = settings.name or info["architecture"]
    normalisation = Normalisation.from_json(info["normalisation"])
    reference = pytorch_logits(inputs.model, normalisation, inputs.test_images)
    pytorch_accuracy = evaluate.accuracy(reference, inputs.test_labels)

    log(f"exporting {info['architecture']} to ONNX (opset {settings.opset})")
    wrapper = wrap_for_export(inputs.model, normalisation, inputs.image_shape)
    fp32_model = export_onnx(wrapper, inputs.image_shape, settings.opset)
    stamp = _Stamp(inputs, name, settings.version)
    candidates, recipe_errors = _build_variants(fp32_model, inputs, staging, settings, recipes, stamp, log)
    results = _measure(candidates, inputs, reference, pytorch_accuracy, settings, log)

    within_bound = {key: r["accuracy_change"] >= -settings.max_accuracy_drop for key, r in results.items()}
    recipe_results = []
    if "int8" in settings.quantize:
        recipe_results = [_recipe_result(r, results, within_bound, recipe_errors) for r in recipes]
    chosen, choice = _choose_recipe(recipe_results, settings)
    variants = [_fp32_result(results["fp32"], within_bound["fp32"], name, settings)]
    if "int8" in settings.quantize:
        variants.append(_int8_result(chosen, results, recipe_results, name, settings))
    for variant in ("fp16", "dynamic"):
        if variant in settings.quantize:
            variants.append(_other_result(variant, results, within_bound[variant], name, settings))

    files = {**candidates, "int8": candidates.get(_recipe_key(chosen.name)) if chosen else None}
    _publish(variants, files, out_dir)
    report = ExportReport(
        run_dir=str(inputs.run_dir.resolve()),
        out_dir=str(out_dir.resolve()),
        model_name=name,
        architecture=info["architecture"],
        version=settings.version,
        test_set=inputs.test_set,
        test_images=len(inputs.test_images),
        pytorch_accuracy=pytorch_accuracy,
        normalisation_fold=FOLD_DESCRIPTIONS[wrapper.folded],
        machine=evaluate.describe_machine(settings.threads),
        settings=settings.to_json(),
        variants=variants,
        recipes=recipe_results,
        chosen_recipe=chosen.name if chosen else "",
        recipe_choice=choice,
    )
    report.write(out_dir)
    return report


class _Stamp:
    """Writes each variant's metadata (name, version, labels, input, source run) into its file."""

    def __init__(self, inputs: ExportInputs, name: str, version: str):
        self.inputs, self.name, self.version = inputs, name, version

    def metadata(self, variant: str) -> ModelMetadata:
        info = self.inputs.info
        height, width, channels = self.inputs.image_shape
        return ModelMetadata(
            name=_model_name(self.name, variant),
            version=self.version,
            labels=list(info["labels"]),
            height=height,
            width=width,
            channels=channels,
            architecture=info["architecture"],
            variant=variant,
            source_run=str(self.inputs.run_dir.resolve()),
            test_accuracy=info.get("test_accuracy"),
        )

    def save(self, model: onnx.ModelProto, path: Path, variant: str) -> Path:
        write_metadata(model, self.metadata(variant))
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(path))
        return path

    def file(self, path: Path, variant: str) -> Path:
        """Stamp a model file that onnxruntime.quantization wrote."""
        return self.save(onnx.load(str(path)), path, variant)


def _build_variants(
    fp32_model: onnx.ModelProto,
    inputs: ExportInputs,
    staging: Path,
    settings: ExportSettings,
    recipes: tuple[quantize.Int8Recipe, ...],
    stamp: _Stamp,
    log: Log,
) -> tuple[dict[str, Path], dict[str, str]]:
    """Every candidate file in ``staging`` (fp32, each int8 recipe, fp16, dynamic) and the recipes that failed."""
    candidates = {"fp32": stamp.save(fp32_model, staging / OUTPUT_FILES["fp32"], "fp32")}
    recipe_errors: dict[str, str] = {}
    if "int8" in settings.quantize or "dynamic" in settings.quantize:
        preprocessed = quantize.preprocess_for_quantisation(candidates["fp32"], staging / "preprocessed.onnx")
    if "int8" in settings.quantize:
        for recipe in recipes:
            log(f"int8 recipe {recipe.name}: calibrating on {len(inputs.calibration_images)} training images")
            target = staging / f"int8.{recipe.name}.onnx"
            try:
                quantize.quantize_int8(preprocessed, target, inputs.calibration_images, recipe, settings.calibration_method)
            except Exception as exc:  # one recipe failing must not end the search
                recipe_errors[recipe.name] = _one_line(exc)
                continue
            candidates[_recipe_key(recipe.name)] = stamp.file(target, "int8")
    if "fp16" in settings.quantize:
        log("fp16: converting weights and arithmetic")
        candidates["fp16"] = stamp.save(quantize.convert_fp16(fp32_model), staging / OUTPUT_FILES["fp16"], "fp16")
    if "dynamic" in settings.quantize:
        log("dynamic int8: quantising weights")
        target = quantize.quantize_dynamic_int8(preprocessed, staging / OUTPUT_FILES["dynamic"])
        candidates["dynamic"] = stamp.file(target, "dynamic")
    return candidates, recipe_errors


def _measure(
    candidates: dict[str, Path],
    inputs: ExportInputs,
    reference: np.ndarray,
    pytorch_accuracy: float,
    settings: ExportSettings,
    log: Log,
) -> dict[str, dict[str, Any]]:
    """Size, accuracy, parity with PyTorch and speed of every candidate, all timed interleaved."""
    log(f"evaluating {len(candidates)} models on {len(inputs.test_images)} test images")
    sessions = {key: evaluate.open_session(path, settings.threads) for key, path in candidates.items()}
    logits = {key: evaluate.predict_logits(session, inputs.test_images) for key, session in sessions.items()}
    log(f"timing {len(sessions)} models interleaved at batch {settings.latency_batch} and {settings.throughput_batch}")
    speeds = evaluate.time_sessions(
        sessions,
        inputs.test_images,
        latency_batch=settings.latency_batch,
        throughput_batch=settings.throughput_batch,
        rounds=settings.timing_rounds,
    )
    results = {}
    for key, path in candidates.items():
        parity = evaluate.parity(logits[key], reference)
        accuracy = evaluate.accuracy(logits[key], inputs.test_labels)
        results[key] = dict(
            size_bytes=path.stat().st_size,
            accuracy=accuracy,
            accuracy_change=accuracy - pytorch_accuracy,
            max_abs_logit_diff=parity.max_abs_logit_diff,
            top1_agreement=parity.top1_agreement,
            latency_ms=speeds[key].latency_ms,
            throughput_ips=speeds[key].throughput_ips,
        )
    return results


def _publish(variants: list[VariantResult], files: dict[str, Path | None], out_dir: Path) -> None:
    """Rename each passing variant into ``out_dir`` (atomic: same filesystem); remove stale failed ones."""
    for v in variants:
        destination = out_dir / OUTPUT_FILES[v.variant]
        source = files[v.variant]
        if v.ok and source is not None:
            os.replace(source, destination)
        elif destination.exists():  # a file from an earlier export would contradict this report
            destination.unlink()


@torch.no_grad()
def pytorch_logits(model: nn.Module, normalisation: Normalisation, images: np.ndarray) -> np.ndarray:
    """The trained model's logits on uint8 NHWC images, preprocessed exactly as the trainer does."""
    model.eval()
    parts = []
    for start in range(0, len(images), PYTORCH_BATCH):
        batch = torch.tensor(images[start : start + PYTORCH_BATCH]).permute(0, 3, 1, 2)  # a copy: may be read-only
        parts.append(model(normalisation.model_input(batch)).numpy())
    return np.concatenate(parts)


# --- verdicts -----------------------------------------------------------------------------


def _recipe_key(name: str) -> str:
    return f"int8/{name}"


def _recipe_result(
    recipe: quantize.Int8Recipe,
    results: dict[str, dict[str, Any]],
    within_bound: dict[str, bool],
    errors: dict[str, str],
) -> RecipeResult:
    key = _recipe_key(recipe.name)
    if key not in results:
        return RecipeResult(recipe.name, recipe.why, error=errors.get(recipe.name, "not produced"))
    r, fp32 = results[key], results["fp32"]
    return RecipeResult(
        name=recipe.name,
        why=recipe.why,
        size_bytes=r["size_bytes"],
        accuracy=r["accuracy"],
        accuracy_change=r["accuracy_change"],
        latency_ms=r["latency_ms"],
        throughput_ips=r["throughput_ips"],
        speedup_latency=fp32["latency_ms"] / r["latency_ms"],
        speedup_throughput=r["throughput_ips"] / fp32["throughput_ips"],
        within_accuracy_bound=within_bound[key],
    )


def _choose_recipe(recipes: list[RecipeResult], settings: ExportSettings) -> tuple[RecipeResult | None, str]:
    """The fastest recipe whose accuracy stays within the bound, by the geometric mean of both speedups.

    Timings on a shared machine jitter by a few percent, so recipes within TIE_MARGIN of the
    fastest count as tied, and a tie goes to the one listed first (the plainer recipe).
    """
    if not recipes:
        return None, ""
    eligible = [r for r in recipes if not r.error and r.within_accuracy_bound]
    if not eligible:
        tried = [r for r in recipes if not r.error]
        if not tried:
            return None, "no int8 recipe could be quantised: " + "; ".join(f"{r.name}: {r.error}" for r in recipes)
        best = max(tried, key=lambda r: r.accuracy_change)
        return None, (
            f"every int8 recipe loses more than {settings.max_accuracy_drop * 100:.2f} points; "
            f"the best, {best.name}, loses {-best.accuracy_change * 100:.2f}"
        )
    fastest = max(r.speedup for r in eligible)
    chosen = next(r for r in eligible if r.speedup >= fastest * (1 - TIE_MARGIN))
    reason = (
        f"{chosen.name} won: the fastest within the accuracy bound on this machine "
        f"({chosen.speedup_latency:.2f}x fp32 at batch {settings.latency_batch}, "
        f"{chosen.speedup_throughput:.2f}x at batch {settings.throughput_batch}, {chosen.accuracy_change * 100:+.2f} points)"
    )
    tied = [r.name for r in eligible if r is not chosen and r.speedup >= fastest * (1 - TIE_MARGIN)]
    if tied:
        reason += f"; tied within {TIE_MARGIN:.0%} with {', '.join(tied)}, listed later"
    slower = [f"{r.name} {r.speedup:.2f}x" for r in eligible if r.speedup < fastest * (1 - TIE_MARGIN)]
    if slower:
        reason += f"; slower (geometric mean of both speedups): {', '.join(slower)}"
    excluded = [r.name for r in recipes if not r.error and not r.within_accuracy_bound]
    if excluded:
        reason += f"; over the accuracy bound: {', '.join(excluded)}"
    return chosen, reason + "."


def _model_name(name: str, variant: str) -> str:
    """The name a variant is served under: the run's name for fp32, suffixed for the others."""
    return name if variant == "fp32" else f"{name}-{variant}"


def _variant(variant: str, r: dict[str, Any], name: str, ok: bool, message: str, recipe: str = "") -> VariantResult:
    return VariantResult(
        variant=variant,
        file=OUTPUT_FILES[variant],
        model_name=_model_name(name, variant),
        status="ok" if ok else "failed",
        message=message,
        recipe=recipe,
        **r,
    )


def _fp32_result(r: dict[str, Any], within_bound: bool, name: str, settings: ExportSettings) -> VariantResult:
    problems = []
    if r["max_abs_logit_diff"] > PARITY_TOLERANCE:
        problems.append(f"max |logit difference| vs PyTorch is {r['max_abs_logit_diff']:.2e} > {PARITY_TOLERANCE:.0e}")
    if r["top1_agreement"] < 1.0:
        problems.append(f"top-1 agrees with PyTorch on only {r['top1_agreement']:.2%} of the test images")
    if not within_bound:
        problems.append(_drop_message(r, settings))
    return _variant("fp32", r, name, not problems, "; ".join(problems))


def _int8_result(
    chosen: RecipeResult | None,
    results: dict[str, dict[str, Any]],
    recipes: list[RecipeResult],
    name: str,
    settings: ExportSettings,
) -> VariantResult:
    if chosen is None:
        tried = [results[_recipe_key(r.name)] for r in recipes if _recipe_key(r.name) in results]
        best = max(tried, key=lambda r: r["accuracy_change"], default=None)
        empty = dict.fromkeys(results["fp32"], 0.0) | {"size_bytes": 0}
        message = _drop_message(best, settings) if best else "no int8 recipe could be quantised"
        return _variant("int8", best or empty, name, False, message)
    speed = (
        f"{chosen.speedup_latency:.2f}x fp32 at batch {settings.latency_batch}, "
        f"{chosen.speedup_throughput:.2f}x at batch {settings.throughput_batch}"
    )
    if min(chosen.speedup_latency, chosen.speedup_throughput) < 1.0:
        speed = f"slower than fp32 on this machine: {speed} (too small a model for int8 to pay, or a busy machine)"
    return _variant("int8", results[_recipe_key(chosen.name)], name, True, speed, recipe=chosen.name)


def _other_result(variant: str, results: dict[str, dict[str, Any]], within_bound: bool, name: str, settings: ExportSettings) -> VariantResult:
    r, fp32 = results[variant], results["fp32"]
    if not within_bound:
        return _variant(variant, r, name, False, _drop_message(r, settings))
    speedup = r["throughput_ips"] / fp32["throughput_ips"]
    notes = {
        "fp16": "for the CUDA provider; on CPU onnxruntime runs it through float32 kernels and casts, "
        "so its CPU timing says nothing about CUDA",
        "dynamic": f"dynamic quantisation turns Conv into ConvInteger: {speedup:.2f}x fp32 at batch "
        f"{settings.throughput_batch} here; use int8 for CNNs",
    }
    return _variant(variant, r, name, True, notes[variant])


def _drop_message(r: dict[str, Any], settings: ExportSettings) -> str:
    return (
        f"accuracy {r['accuracy']:.4f} is {-r['accuracy_change'] * 100:.2f} points below PyTorch, "
        f"more than --max-accuracy-drop {settings.max_accuracy_drop} ({settings.max_accuracy_drop * 100:.2f} points)"
    )


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]

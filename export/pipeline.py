"""The one pipeline both export sources share: a wire-format fp32 ONNX model -> variants -> measured -> published.

A source (a trainer run directory, exporter.py; or an imported ONNX classifier, importer.py)
hands over the fp32 graph in edgecnn's wire format (uint8 NHWC ``images`` in, ``logits`` and
``probabilities`` out), its metadata, real images and the reference logits every variant is
held to. From there everything is shared: the int8 recipe search, fp16 and dynamic variants,
accuracy and parity, interleaved timing, the verdicts, staged publishing and the report.

Everything is built in a staging folder inside OUT_DIR and renamed into place at the end, so
an interrupted or failed export never leaves a half-written .onnx behind, and a variant that
fails its accuracy bound is never written. Torch-free: an import never loads torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from edgecnn.export import evaluate, quantize
from edgecnn.export.cpu import cpu_model, cpu_path
from edgecnn.export.metadata import ModelMetadata, write_metadata
from edgecnn.export.report import (
    ExportReport,
    Int8Speed,
    RecipeResult,
    VariantResult,
    batch_comparisons,
    int8_speed_summary,
)
from edgecnn.export.settings import ExportError, ExportSettings

Log = Callable[[str], None]

OUTPUT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx", "dynamic": "model.dynamic.onnx"}
PARITY_TOLERANCE = 1e-4  # max |logit difference| between the fp32 ONNX model and its reference
TIE_MARGIN = 0.03  # int8 recipes this close to the fastest count as equally fast


@dataclass
class Source:
    """What the pipeline needs from a source, loaded: the model's metadata, real images, the reference."""

    kind: str  # run | onnx
    path: Path  # the run directory or the imported file
    metadata: ModelMetadata  # the fp32 model's; the variants get their name suffix and variant
    calibration_images: np.ndarray | None  # uint8 NHWC; None: no int8 possible
    evaluation_images: np.ndarray  # uint8 NHWC: accuracy, parity and timing
    evaluation_labels: np.ndarray  # the truth, or the reference's own top-1 (accuracy = agreement)
    evaluation_set: str  # where the evaluation images come from, in words
    reference_logits: np.ndarray  # what the fp32 model must reproduce on evaluation_images
    reference: str = "PyTorch"  # what the reference is, in a word or two
    preprocessing: str = ""  # the normalisation inside the graph, in words
    accuracy_basis: str = ""  # what "accuracy" means, when it is not test accuracy
    notes: list[str] = field(default_factory=list)
    parity_tolerance: float = PARITY_TOLERANCE  # looser only for a graph that itself computes in float16


def select_recipes(names: tuple[str, ...]) -> tuple[quantize.Int8Recipe, ...]:
    if not names:
        return quantize.INT8_RECIPES
    unknown = [n for n in names if n not in quantize.RECIPES_BY_NAME]
    if unknown:
        known = ", ".join(quantize.RECIPES_BY_NAME)
        raise ExportError(f"unknown int8 recipe {', '.join(unknown)}; the recipes are: {known}")
    return tuple(quantize.RECIPES_BY_NAME[n] for n in names)


@contextlib.contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A fresh staging folder inside ``out_dir``, removed afterwards (and ``out_dir`` too if this made it
    and nothing was published)."""
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    except OSError as exc:
        raise ExportError(f"cannot write to the output folder {out_dir}: {exc.strerror or exc}") from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()


def export_model(
    fp32_model: onnx.ModelProto,
    source: Source,
    out_dir: Path,
    staging: Path,
    settings: ExportSettings,
    recipes: tuple[quantize.Int8Recipe, ...],
    log: Log,
) -> ExportReport:
    """Build every variant of ``fp32_model`` in ``staging``, measure them, publish the passing ones, report."""
    reference_accuracy = evaluate.accuracy(source.reference_logits, source.evaluation_labels)
    name = source.metadata.name
    stamp = _Stamp(source.metadata)
    candidates, recipe_errors = _build_variants(fp32_model, source, staging, settings, recipes, stamp, log)
    results = _measure(candidates, source, reference_accuracy, settings, log)

    within_bound = {key: r["accuracy_change"] >= -settings.max_accuracy_drop for key, r in results.items()}
    recipe_results = []
    if "int8" in settings.quantize:
        recipe_results = [_recipe_result(r, results, within_bound, recipe_errors) for r in recipes]
    chosen, choice = _choose_recipe(recipe_results, settings, source.reference)
    int8_speed = _time_chosen_afresh(chosen, candidates, source, settings, log)
    verdict = _Verdict(name, settings, source.reference, source.parity_tolerance)
    variants = [verdict.fp32(results["fp32"], within_bound["fp32"], int8_speed)]
    if "int8" in settings.quantize:
        variants.append(verdict.int8(chosen, results, recipe_results, int8_speed))
    for variant in ("fp16", "dynamic"):
        if variant in settings.quantize:
            variants.append(verdict.other(variant, results, within_bound[variant]))

    files = {**candidates, "int8": candidates.get(_recipe_key(chosen.name)) if chosen else None}
    _publish(variants, files, out_dir)
    serve_variant, serve_reason = serving_choice(variants, int8_speed)
    report = ExportReport(
        run_dir=str(source.path.resolve()),
        out_dir=str(out_dir.resolve()),
        model_name=name,
        architecture=source.metadata.architecture,
        version=settings.version,
        test_set=source.evaluation_set,
        test_images=len(source.evaluation_images),
        pytorch_accuracy=reference_accuracy,
        normalisation_fold=source.preprocessing,
        machine=evaluate.describe_machine(settings.threads),
        settings=settings.to_json(),
        variants=variants,
        recipes=recipe_results,
        chosen_recipe=chosen.name if chosen else "",
        recipe_choice=choice,
        int8_speed=int8_speed,
        source=source.kind,
        reference=source.reference,
        accuracy_basis=source.accuracy_basis,
        notes=list(source.notes),
        serve_file=OUTPUT_FILES[serve_variant] if serve_variant else "",
        served_as=model_name(name, serve_variant) if serve_variant else "",
        serve_reason=serve_reason,
    )
    report.write(out_dir)
    return report


class _Stamp:
    """Writes each variant's metadata (name, version, labels, input, source) into its file; an int8
    recipe's file also records the recipe and the CPU it is chosen on, so serve can tell another CPU."""

    def __init__(self, metadata: ModelMetadata):
        self.base = metadata

    def metadata(self, variant: str, int8_recipe: str = "") -> ModelMetadata:
        meta = dataclasses.replace(self.base, name=model_name(self.base.name, variant), variant=variant)
        if not int8_recipe:
            return meta
        return dataclasses.replace(meta, int8_recipe=int8_recipe, cpu_path=cpu_path(), cpu_model=cpu_model())

    def save(self, model: onnx.ModelProto, path: Path, variant: str, int8_recipe: str = "") -> Path:
        write_metadata(model, self.metadata(variant, int8_recipe))
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(path))
        return path

    def file(self, path: Path, variant: str, int8_recipe: str = "") -> Path:
        """Stamp a model file that onnxruntime.quantization wrote."""
        return self.save(onnx.load(str(path)), path, variant, int8_recipe)


def _build_variants(
    fp32_model: onnx.ModelProto,
    source: Source,
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
        if source.calibration_images is None or not len(source.calibration_images):
            raise ExportError("int8 needs calibration images and this source has none")
        for recipe in recipes:
            log(f"int8 recipe {recipe.name}: calibrating on {len(source.calibration_images)} images")
            target = staging / f"int8.{recipe.name}.onnx"
            try:
                quantize.quantize_int8(preprocessed, target, source.calibration_images, recipe, settings.calibration_method)
            except Exception as exc:  # one recipe failing must not end the search
                recipe_errors[recipe.name] = _one_line(exc)
                continue
            candidates[_recipe_key(recipe.name)] = stamp.file(target, "int8", int8_recipe=recipe.name)
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
    source: Source,
    reference_accuracy: float,
    settings: ExportSettings,
    log: Log,
) -> dict[str, dict[str, Any]]:
    """Size, accuracy, parity with the reference and speed of every candidate, all timed interleaved."""
    images = source.evaluation_images
    log(f"evaluating {len(candidates)} models on {len(images)} images")
    sessions = {key: evaluate.open_session(path, settings.threads) for key, path in candidates.items()}
    logits = {key: evaluate.predict_logits(session, images) for key, session in sessions.items()}
    log(f"timing {len(sessions)} models interleaved at batch {settings.latency_batch} and {settings.throughput_batch}")
    speeds = evaluate.time_sessions(
        sessions,
        images,
        latency_batch=settings.latency_batch,
        throughput_batch=settings.throughput_batch,
        rounds=settings.timing_rounds,
    )
    results = {}
    for key, path in candidates.items():
        parity = evaluate.parity(logits[key], source.reference_logits)
        accuracy = evaluate.accuracy(logits[key], source.evaluation_labels)
        results[key] = dict(
            size_bytes=path.stat().st_size,
            accuracy=accuracy,
            accuracy_change=accuracy - reference_accuracy,
            max_abs_logit_diff=parity.max_abs_logit_diff,
            top1_agreement=parity.top1_agreement,
            latency_ms=speeds[key].latency_ms,
            throughput_ips=speeds[key].throughput_ips,
        )
    return results


def _time_chosen_afresh(
    chosen: RecipeResult | None, candidates: dict[str, Path], source: Source, settings: ExportSettings, log: Log
) -> Int8Speed | None:
    """fp32 and the chosen int8 file timed again, in new sessions: the search's samples picked the
    fastest of several noisy figures, so they would flatter the winner."""
    if chosen is None:
        return None
    log(f"timing fp32 and int8 ({chosen.name}) afresh: A B A B, {settings.timing_rounds} rounds")
    return evaluate.time_fp32_vs_int8(
        candidates["fp32"],
        candidates[_recipe_key(chosen.name)],
        source.evaluation_images,
        recipe=chosen.name,
        threads=settings.threads,
        latency_batch=settings.latency_batch,
        throughput_batch=settings.throughput_batch,
        rounds=settings.timing_rounds,
    )


def _publish(variants: list[VariantResult], files: dict[str, Path | None], out_dir: Path) -> None:
    """Rename each passing variant into ``out_dir`` (atomic: same filesystem); remove stale failed ones.
    Nothing is published when fp32 failed its parity check: every other variant is made from that graph."""
    fp32_ok = any(v.variant == "fp32" and v.ok for v in variants)
    for v in variants:
        destination = out_dir / OUTPUT_FILES[v.variant]
        source = files[v.variant]
        if fp32_ok and v.ok and source is not None:
            os.replace(source, destination)
        elif destination.exists():  # a file from an earlier export would contradict this report
            destination.unlink()


# --- verdicts -----------------------------------------------------------------------------


def serving_choice(variants: list[VariantResult], int8_speed: Int8Speed | None) -> tuple[str, str]:
    """The variant to serve on this machine's CPU and why, in a few words: int8 when it passed and the fresh
    A/B timing has it faster than fp32 by more than TIE_MARGIN at both batch sizes, else fp32 (fp16 is for
    CUDA, dynamic only there to compare); ("", why) when fp32 itself failed."""
    passed = {v.variant for v in variants if v.ok}
    if "fp32" not in passed:
        return "", "fp32 failed its checks: nothing to serve"
    if "int8" not in passed or int8_speed is None:
        asked = any(v.variant == "int8" for v in variants)
        return "fp32", "int8 failed its checks" if asked else "no int8 variant was asked for"
    comparisons = batch_comparisons(int8_speed)
    figures = ", ".join(f"{s.median_speedup:.2f}x fp32 at batch {s.batch}" for s in comparisons)
    if all(s.median_speedup > 1 + TIE_MARGIN for s in comparisons):
        return "int8", f"int8 is faster here ({figures}, fresh A/B timing)"
    return "fp32", f"int8 is not clearly faster here ({figures}, fresh A/B timing)"


def model_name(name: str, variant: str) -> str:
    """The name a variant is served under: the model's name for fp32, suffixed for the others."""
    return name if variant == "fp32" else f"{name}-{variant}"


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


def _choose_recipe(
    recipes: list[RecipeResult], settings: ExportSettings, reference: str = "PyTorch"
) -> tuple[RecipeResult | None, str]:
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
            f"every int8 recipe loses more than {settings.max_accuracy_drop * 100:.2f} points vs {reference}; "
            f"the best, {best.name}, loses {-best.accuracy_change * 100:.2f}"
        )
    fastest = max(r.speedup for r in eligible)
    chosen = next(r for r in eligible if r.speedup >= fastest * (1 - TIE_MARGIN))
    reason = (
        f"{chosen.name} won: the fastest within the accuracy bound on this machine "
        f"(search timing: {chosen.speedup_latency:.2f}x fp32 at batch {settings.latency_batch}, "
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


class _Verdict:
    """Each variant's status and message, against the bound and the reference."""

    def __init__(self, name: str, settings: ExportSettings, reference: str, tolerance: float = PARITY_TOLERANCE):
        self.name, self.settings, self.reference, self.tolerance = name, settings, reference, tolerance

    def fp32(self, r: dict[str, Any], within_bound: bool, int8_speed: Int8Speed | None) -> VariantResult:
        problems = []
        if r["max_abs_logit_diff"] > self.tolerance:
            problems.append(
                f"max |logit difference| vs {self.reference} is {r['max_abs_logit_diff']:.2e} > {self.tolerance:.0e}"
            )
        if r["top1_agreement"] < 1.0:
            problems.append(f"top-1 agrees with {self.reference} on only {r['top1_agreement']:.2%} of the test images")
        if not within_bound:
            problems.append(self.drop_message(r))
        return self.variant("fp32", r, not problems, "; ".join(problems), int8_speed=int8_speed)

    def int8(
        self,
        chosen: RecipeResult | None,
        results: dict[str, dict[str, Any]],
        recipes: list[RecipeResult],
        int8_speed: Int8Speed | None,
    ) -> VariantResult:
        if chosen is None or int8_speed is None:
            tried = [results[_recipe_key(r.name)] for r in recipes if _recipe_key(r.name) in results]
            best = max(tried, key=lambda r: r["accuracy_change"], default=None)
            empty = dict.fromkeys(results["fp32"], 0.0) | {"size_bytes": 0}
            message = self.drop_message(best) if best else "no int8 recipe could be quantised"
            return self.variant("int8", best or empty, False, message)
        message = int8_speed_summary(int8_speed)
        if min(int8_speed.latency.median_speedup, int8_speed.throughput.median_speedup) < 1.0:
            message += " (too small a model for int8 to pay, or a busy machine)"
        return self.variant("int8", results[_recipe_key(chosen.name)], True, message, recipe=chosen.name, int8_speed=int8_speed)

    def other(self, variant: str, results: dict[str, dict[str, Any]], within_bound: bool) -> VariantResult:
        r, fp32 = results[variant], results["fp32"]
        if not within_bound:
            return self.variant(variant, r, False, self.drop_message(r))
        speedup = r["throughput_ips"] / fp32["throughput_ips"]
        notes = {
            "fp16": "for the CUDA provider; on CPU onnxruntime runs it through float32 kernels and casts, "
            "so its CPU timing says nothing about CUDA",
            "dynamic": f"dynamic quantisation turns Conv into ConvInteger: {speedup:.2f}x fp32 at batch "
            f"{self.settings.throughput_batch} here; use int8 for CNNs",
        }
        return self.variant(variant, r, True, notes[variant])

    def variant(
        self,
        variant: str,
        r: dict[str, Any],
        ok: bool,
        message: str,
        recipe: str = "",
        int8_speed: Int8Speed | None = None,
    ) -> VariantResult:
        """The row of ``variant``; fp32 and int8 take their speed from the fresh timing where there is one."""
        fresh = int8_speed is not None and variant in ("fp32", "int8")
        if fresh:
            r = r | int8_speed.figures(variant)
        return VariantResult(
            variant=variant,
            file=OUTPUT_FILES[variant],
            model_name=model_name(self.name, variant),
            status="ok" if ok else "failed",
            message=message,
            recipe=recipe,
            timing="fresh" if fresh else "search",
            **r,
        )

    def drop_message(self, r: dict[str, Any]) -> str:
        bound = self.settings.max_accuracy_drop
        return (
            f"accuracy {r['accuracy']:.4f} is {-r['accuracy_change'] * 100:.2f} points below {self.reference}, "
            f"more than --max-accuracy-drop {bound} ({bound * 100:.2f} points)"
        )


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]

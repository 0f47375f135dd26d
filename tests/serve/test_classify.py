"""`edgecnn classify INPUT --model MODEL.onnx -o OUT`: one row per image, equal to onnxruntime run in-process on
the same decoded images; unreadable images reported in their rows; CSV and Parquet; folder and glob input;
`--engine ray` equal to the local engine; nothing half-written."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import typer
from edgecnn.export.metadata import PROBABILITIES
from edgecnn.serve import classify as classify_module
from edgecnn.serve import classify_cli
from PIL import Image
from typer.testing import CliRunner

from tests.helpers.models import reference_outputs
from tests.helpers.pixels import pillow_grey_8x8

LABELS = ("zero", "one", "two")


def cli() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    classify_cli.register(app)

    @app.command()
    def other() -> None:  # a second command keeps `classify` a subcommand, as under `edgecnn`
        pass

    return app


def run_classify(*args: str):
    return CliRunner().invoke(cli(), ["classify", *args, "--no-progress"], env={"COLUMNS": "250"})


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """PNGs (grey, RGB of another size, RGBA) at the top, JPEGs in a sub-folder, one corrupt PNG, one text file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    (root / "sub").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / f"grey{i}.png")
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(root / f"rgb{i}.png")
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "sub" / f"photo{i}.jpg",
                                                                                quality=90)
    Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA").save(root / "alpha.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    (root / "notes.txt").write_text("not an image, and not an image suffix: the folder scan skips it")
    return root


def expected_rows(paths: list[Path], model: Path, k: int = 3) -> dict[str, dict]:
    """What in-process onnxruntime says about the same images decoded by Pillow (the broken file: no row values)."""
    decoded = {str(path): pillow_grey_8x8(path) for path in paths}
    good = [p for p, a in decoded.items() if a is not None]
    probabilities = reference_outputs(model, np.stack([decoded[p] for p in good]))[PROBABILITIES]
    rows = {p: {"label": None, "score": None, "top_k": None} for p in decoded}
    for path, p in zip(good, probabilities):
        best = np.argsort(-p, kind="stable")[:k]
        rows[path] = {
            "label": LABELS[best[0]],
            "score": float(p[best[0]]),
            "top_k": [{"label": LABELS[c], "index": int(c), "score": float(p[c])} for c in best],
        }
    return rows


def read_csv(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "label", "score", "top_k", "error"]
        return {
            row["path"]: {
                "label": row["label"] or None,
                "score": float(row["score"]) if row["score"] else None,
                "top_k": json.loads(row["top_k"]) if row["top_k"] else None,
                "error": row["error"] or None,
            }
            for row in reader
        }


def read_parquet(path: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    assert table.column_names == ["path", "label", "score", "top_k", "error"]
    return {
        row.pop("path"): {**row, "top_k": json.loads(row["top_k"]) if row["top_k"] else None}
        for row in table.to_pylist()
    }


def without_error(rows: dict[str, dict]) -> dict[str, dict]:
    return {p: {k: v for k, v in row.items() if k not in ("error", "path")} for p, row in rows.items()}


def test_folder_to_csv_equals_in_process_onnxruntime(tiny_model, images, tmp_path):
    out = tmp_path / "labels.csv"
    # Batches of 3 over 14 images: several batches in flight, the last one short.
    result = run_classify(str(images), "--model", str(tiny_model), "-o", str(out), "--batch-size", "3",
                          "--decode-threads", "2")
    assert result.exit_code == 0, result.output
    assert "14 images, 1 error," in result.output and "images/s" in result.output

    rows = read_csv(out)
    paths = sorted(p for p in images.rglob("*") if p.suffix in (".png", ".jpg"))
    assert list(rows) == [str(p) for p in paths]  # recursive, sorted, the .txt skipped
    assert without_error(rows) == expected_rows(paths, tiny_model)
    broken = rows[str(images / "broken.png")]
    assert broken["label"] is None and broken["score"] is None and "not a PNG or JPEG image" in broken["error"]
    assert all(row["error"] is None for path, row in rows.items() if not path.endswith("broken.png"))
    assert [p.name for p in tmp_path.iterdir()] == ["labels.csv"]  # no temp file left beside it


def test_parquet_holds_the_same_rows_with_nulls(tiny_model, images, tmp_path):
    run_classify(str(images), "--model", str(tiny_model), "-o", str(tmp_path / "labels.csv"))
    result = run_classify(str(images), "--model", str(tiny_model), "-o", str(tmp_path / "labels.parquet"))
    assert result.exit_code == 0, result.output
    assert read_parquet(tmp_path / "labels.parquet") == read_csv(tmp_path / "labels.csv")


def test_glob_input_and_top_k(tiny_model, images, tmp_path):
    out = tmp_path / "jpegs.csv"
    result = run_classify(str(images / "**" / "*.jpg"), "--model", str(tiny_model), "-o", str(out), "--top-k", "2")
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    paths = sorted((images / "sub").glob("*.jpg"))
    assert list(rows) == [str(p) for p in paths]
    assert without_error(rows) == expected_rows(paths, tiny_model, k=2)
    assert all(len(row["top_k"]) == 2 for row in rows.values())


def test_images_over_the_pixel_limit_are_reported_in_their_rows(tiny_model, images, tmp_path):
    out = tmp_path / "limited.csv"
    result = run_classify(str(images), "--model", str(tiny_model), "-o", str(out), "--max-image-pixels", "100")
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    refused = {Path(p).name for p, row in rows.items() if row["error"] and "over the limit" in row["error"]}
    assert refused == {f"rgb{i}.png" for i in range(4)} | {f"photo{i}.jpg" for i in range(4)}
    assert all(row["label"] for p, row in rows.items() if Path(p).name.startswith("grey"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray Data's own settings
def test_ray_engine_equals_the_local_engine(tiny_model, images, tmp_path, monkeypatch):
    import ray.data  # noqa: F401 - never skipped: edgecnn[dev] includes edgecnn[ray], so CI runs this test

    # A relative INPUT: rows keep the paths as given, while the actors (whose working folder is not
    # ours) read them by their absolute paths.
    monkeypatch.chdir(images)
    run_classify(".", "--model", str(tiny_model), "-o", str(tmp_path / "local.csv"))
    result = run_classify(".", "--model", str(tiny_model), "-o", str(tmp_path / "ray.csv"),
                          "--engine", "ray", "--ray-cpus", "2", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert "14 images, 1 error," in result.output
    assert read_csv(tmp_path / "ray.csv") == read_csv(tmp_path / "local.csv")
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    assert "sub/photo0.jpg" in read_csv(tmp_path / "ray.csv")


@pytest.mark.parametrize(
    ("missing", "args", "sentence"),
    [
        (("ray", "ray.data"), ["-o", "x.csv", "--engine", "ray"],
         "error: --engine ray needs Ray, which is not installed: pip install edgecnn[ray]"),
        (("pyarrow", "pyarrow.parquet"), ["-o", "x.parquet"],
         "error: writing Parquet needs pyarrow, which is not installed: pip install edgecnn[ray] (or pyarrow)"),
    ],
    ids=["ray", "pyarrow"],
)
def test_a_missing_optional_library_is_one_sentence(tiny_model, images, tmp_path, monkeypatch, missing, args,
                                                    sentence):
    for module in missing:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    monkeypatch.chdir(tmp_path)
    result = run_classify(str(images), "--model", str(tiny_model), *args)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [sentence]
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_old_output_and_no_temp_file(tiny_model, images, tmp_path, monkeypatch):
    out = tmp_path / "labels.csv"
    out.write_text("the previous run's rows\n")
    real_records = classify_module._records

    def fail_halfway(columns):
        for i, record in enumerate(real_records(columns)):
            if i == 5:
                raise OSError("disk full")
            yield record

    monkeypatch.setattr(classify_module, "_records", fail_halfway)
    result = run_classify(str(images), "--model", str(tiny_model), "-o", str(out))
    assert result.exit_code == 1 and "disk full" in result.output
    assert out.read_text() == "the previous run's rows\n"
    assert [p.name for p in tmp_path.iterdir()] == ["labels.csv"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "{tmp}/labels.txt"], "the output must end in .csv or .parquet"),
        (["-o", "{tmp}/labels.csv", "--model", "{tmp}/missing.onnx"], "--model {tmp}/missing.onnx: no such file"),
    ],
    ids=["output-suffix", "missing-model"],
)
def test_bad_arguments_fail_before_any_work(tiny_model, images, tmp_path, args, message):
    args, message = [a.format(tmp=tmp_path) for a in args], message.format(tmp=tmp_path)
    if "--model" not in args:
        args += ["--model", str(tiny_model)]
    result = run_classify(str(images), *args)
    assert result.exit_code == 1 and result.output.startswith("error: ") and message in result.output
    result = run_classify(str(tmp_path / "nothing-here"), "--model", str(tiny_model), "-o", str(tmp_path / "a.csv"))
    assert result.exit_code == 1 and "no such folder or file" in result.output


def test_classify_is_torch_free(tiny_model, images, tmp_path):
    code = (
        "import sys; from pathlib import Path; from edgecnn.serve.classify import ClassifySettings, classify; "
        "classify(ClassifySettings(input=sys.argv[1], model=Path(sys.argv[2]), output=Path(sys.argv[3]), "
        "progress=False)); assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(images), str(tiny_model), str(tmp_path / "out.csv")],
                   check=True, timeout=120)
    assert len(read_csv(tmp_path / "out.csv")) == 14


def test_a_model_without_edgecnn_metadata_is_one_line(tiny_model, images, tmp_path):
    import onnx

    bare = onnx.load(str(tiny_model))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    result = run_classify(str(images), "--model", str(tmp_path / "bare.onnx"), "-o", str(tmp_path / "out.csv"))
    assert result.exit_code == 1
    assert result.output.startswith(f"error: --model {tmp_path / 'bare.onnx'}: no edgecnn metadata in this model")
    assert len(result.output.splitlines()) == 1
    assert not (tmp_path / "out.csv").exists() and [p.name for p in tmp_path.iterdir()] == ["bare.onnx"]


def test_classify_reads_exactly_the_formats_the_server_decodes(tiny_model, client, tmp_path):
    """GIF, BMP and WebP: skipped by a folder scan (by suffix), and refused in their rows when named by a glob,
    with the sentence the server answers the same bytes with."""
    from edgecnn.serve.images import IMAGE_SUFFIXES

    pixels = np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for suffix in (*IMAGE_SUFFIXES, ".gif", ".bmp", ".webp"):
        Image.fromarray(pixels).save(tmp_path / f"image{suffix}")
    result = run_classify(str(tmp_path), "--model", str(tiny_model), "-o", str(tmp_path / "out" / "folder.csv"))
    assert result.exit_code == 0, result.output
    assert sorted(Path(p).suffix for p in read_csv(tmp_path / "out" / "folder.csv")) == sorted(IMAGE_SUFFIXES)

    result = run_classify(str(tmp_path / "image.*"), "--model", str(tiny_model), "-o", str(tmp_path / "glob.csv"))
    assert result.exit_code == 0, result.output
    errors = {Path(p).suffix: row["error"] for p, row in read_csv(tmp_path / "glob.csv").items() if row["error"]}
    assert set(errors) == {".gif", ".bmp", ".webp"}
    for suffix, error in errors.items():
        with pytest.raises(grpc.RpcError) as refused:
            client.infer("tiny", [(tmp_path / f"image{suffix}").read_bytes()])
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().endswith(error) and error.startswith("not a PNG or JPEG image")

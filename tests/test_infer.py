"""pochi infer on real images: files, columns, summary, and every bad input path."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from pochitrain.cli.main import run
from pochitrain.reports import RESULT_COLUMNS


@pytest.fixture()
def small_val(digits_dir: Path, tmp_path: Path) -> Path:
    """30 val images (3 per class) so each inference takes a moment."""
    out = tmp_path / "val"
    for cls in sorted((digits_dir / "val").iterdir()):
        (out / cls.name).mkdir(parents=True)
        for img in sorted(cls.iterdir())[:3]:
            shutil.copy(img, out / cls.name / img.name)
    return out


def _ckpt_copy(untrained_checkpoint: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run" / "models"
    run_dir.mkdir(parents=True)
    return Path(shutil.copy(untrained_checkpoint, run_dir / "best.pth"))


def test_infer_writes_all_files(untrained_checkpoint: Path, small_val: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _ckpt_copy(untrained_checkpoint, tmp_path)
    assert run(["infer", str(ckpt), "--data", str(small_val), "-b", "7", "--quiet"]) == 0
    results = list((tmp_path / "run" / "inference_results").iterdir())
    assert len(results) == 1 and results[0].name.endswith("_001")
    out = results[0]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["classification_report.csv", "confusion_matrix.png", "model_info.json",
                     "pytorch_inference_results.csv", "pytorch_inference_summary.txt"]
    rows = list(csv.DictReader((out / "pytorch_inference_results.csv").open()))
    assert list(rows[0].keys()) == RESULT_COLUMNS
    assert len(rows) == 30
    for row in rows:
        assert row["true_class"] == Path(row["image_path"]).parent.name
        assert row["correct"] == str(row["predicted"] == row["true"])
        assert 0.0 < float(row["confidence"]) <= 1.0
    summary = (out / "pytorch_inference_summary.txt").read_text(encoding="utf-8")
    correct = sum(r["correct"] == "True" for r in rows)
    assert f"({correct}/30)" in summary
    for label in ("精度 / Accuracy", "Pure throughput", "End-to-end throughput",
                  "計測サンプル数 / Measured samples: 30", "ウォームアップサンプル数",
                  "入力サイズ / Input size: 32x32", str(ckpt), str(small_val)):
        assert label in summary
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run gets a new folder, the first stays untouched
    assert run(["infer", str(ckpt), "--data", str(small_val), "--quiet"]) == 0
    assert sorted(p.name[-3:] for p in out.parent.iterdir()) == ["001", "002"]


def test_corrupt_files_are_skipped_and_listed(untrained_checkpoint: Path, small_val: Path,
                                              tmp_path: Path) -> None:
    (small_val / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (small_val / "4" / "notes.jpg").write_text("hello")
    out = tmp_path / "out"
    rc = run(["infer", str(untrained_checkpoint), "--data", str(small_val), "--output", str(out),
              "--quiet"])
    assert rc == 0
    summary = (out / "pytorch_inference_summary.txt").read_text(encoding="utf-8")
    assert "Skipped images: 2" in summary and "broken.png" in summary and "notes.jpg" in summary
    rows = list(csv.DictReader((out / "pytorch_inference_results.csv").open()))
    assert len(rows) == 30


def test_unlabelled_folder(untrained_checkpoint: Path, small_val: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for img in list(small_val.rglob("*.png"))[:5]:
        shutil.copy(img, flat / f"{img.parent.name}_{img.name}")
    out = tmp_path / "out"
    assert run(["infer", str(untrained_checkpoint), "--data", str(flat), "-o", str(out),
                "--quiet"]) == 0
    assert not (out / "confusion_matrix.png").exists()
    rows = list(csv.DictReader((out / "pytorch_inference_results.csv").open()))
    assert len(rows) == 5 and all(r["true"] == "" and r["correct"] == "" for r in rows)


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    rc = run(argv)
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err
    return err


def test_bad_inputs(untrained_checkpoint: Path, small_val: Path, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    ck, data = str(untrained_checkpoint), str(small_val)
    _fails(["infer", str(tmp_path / "nope.pth"), "--data", data], capsys, 1, "not found")
    not_ours = tmp_path / "other.pth"
    import torch

    torch.save({"state_dict": {}}, not_ours)
    _fails(["infer", str(not_ours), "--data", data], capsys, 1, "not a pochitrain checkpoint")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"0" * 100)
    _fails(["infer", str(garbage), "--data", data], capsys, 1, "not a readable")
    _fails(["infer", ck, "--data", str(tmp_path / "missing")], capsys, 1, "does not exist")
    with pytest.raises(SystemExit) as exc:
        run(["infer", ck, "--data", data, "--batch-size", "0"])
    assert exc.value.code == 2
    assert "must be 1 or more" in capsys.readouterr().err
    (small_val / "extra_class").mkdir()
    shutil.copy(next(small_val.rglob("*.png")), small_val / "extra_class" / "x.png")
    _fails(["infer", ck, "--data", data], capsys, 1, "not in the model: extra_class")
    (small_val / "empty").mkdir()
    _fails(["infer", ck, "--data", data], capsys, 1, "no images", "empty")
    _fails(["infer", str(tmp_path / "model.xyz"), "--data", data], capsys, 1, "extension")


def test_output_with_results_is_not_overwritten(untrained_checkpoint: Path, small_val: Path,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["infer", str(untrained_checkpoint), "--data", str(small_val), "-o", str(out),
            "--quiet"]
    assert run(argv) == 0
    before = (out / "pytorch_inference_results.csv").read_bytes()
    _fails(argv, capsys, 1, "already holds inference results")
    assert (out / "pytorch_inference_results.csv").read_bytes() == before


def test_runtimes_agree_and_plain_onnx_works_with_config(trained_run: Path, digits_dir: Path,
                                                        tmp_path: Path) -> None:
    """pochi infer (.pth), infer-onnx on export-onnx's file, and infer-onnx on a plain
    torch.onnx.export (no metadata) with -c give the same predictions on the digits val set."""
    import torch

    from pochitrain.checkpoint import load_model
    from pochitrain.pipeline.export_onnx import export_onnx

    ckpt = next((trained_run / "models").glob("best_epoch*.pth"))
    val = digits_dir / "val"
    exported = export_onnx(ckpt, output=tmp_path / "ours.onnx", data=val, progress=False)
    model, _ = load_model(ckpt)
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(plain), dynamo=False,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})

    def preds(argv: list[str], out: Path) -> list[str]:
        assert run([*argv, "--data", str(val), "-o", str(out), "-b", "16", "--quiet"]) == 0
        csvs = list(out.glob("*_inference_results.csv"))
        return [r["predicted"] for r in csv.DictReader(csvs[0].open())]

    ref = preds(["infer", str(ckpt)], tmp_path / "pt")
    ours = preds(["infer-onnx", str(exported.path)], tmp_path / "onnx")
    other = preds(["infer-onnx", str(plain), "-c", str(trained_run / "config.py")],
                  tmp_path / "plain")
    assert len(ref) == len(ours) == len(other) == 359
    for got in (ours, other):
        assert sum(a == b for a, b in zip(ref, got)) / len(ref) >= 0.995
    summary = (tmp_path / "plain" / "onnx_inference_summary.txt").read_text(encoding="utf-8")
    assert "providers" in summary
    # without metadata and without -c, the message says what to pass
    lonely = tmp_path / "lonely" / "plain.onnx"
    lonely.parent.mkdir()
    lonely.write_bytes(plain.read_bytes())
    assert run(["infer-onnx", str(lonely), "--data", str(val), "--quiet"]) == 2


def test_console_command_ends_quickly_with_its_output_and_exit_code(
        untrained_checkpoint: Path, small_val: Path, tmp_path: Path) -> None:
    """The console entry skips the interpreter's finalization after an inference verb: what
    it printed into a pipe still arrives, every file is whole, and the exit code is kept."""
    import subprocess
    import sys

    def pochi(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pochitrain.cli.main", *argv],
                              check=False, capture_output=True, text=True, timeout=300)

    out = tmp_path / "out"
    done = pochi("infer", str(untrained_checkpoint), "--data", str(small_val), "-o", str(out),
                 "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith(f"結果 / Results: {out}")  # the last line, flushed
    rows = list(csv.DictReader((out / "pytorch_inference_results.csv").open()))
    assert len(rows) == 30
    assert (out / "confusion_matrix.png").read_bytes()[-8:] == b"IEND\xaeB`\x82"  # whole PNG
    again = pochi("infer", str(untrained_checkpoint), "--data", str(small_val), "-o", str(out))
    assert again.returncode == 1 and "already holds inference results" in again.stderr


def test_preprocessing_without_one_size(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``Resize(n)`` with no crop keeps each image's aspect ratio: ``pochi infer`` says so
    (no traceback, no output folder) unless one image goes at a time, the GPU input pipeline
    is not chosen for it, and the server answers a batch of mixed sizes by running each size
    on its own."""
    import numpy as np
    import torch
    from PIL import Image

    from pochitrain.checkpoint import save_checkpoint
    from pochitrain.errors import ConfigError, UsageError
    from pochitrain.gpu_input import resolve_pipeline, to_batch
    from pochitrain.meta import ModelMeta
    from pochitrain.models import build_model
    from pochitrain.onnx.calibration import load_images
    from pochitrain.preprocess import Preprocess
    from pochitrain.serve.decode import Payload
    from pochitrain.serve.model import ServeModel

    torch.manual_seed(0)
    model = build_model("resnet18", 2).eval()
    preprocess = Preprocess(input_size=[32, 32], resize=[32])
    ck = tmp_path / "models" / "aspect.pth"
    ck.parent.mkdir()
    save_checkpoint(ck, model, ModelMeta(["a", "b"], preprocess, model_name="resnet18"))
    data = tmp_path / "data"
    data.mkdir()
    for name, size in (("wide.png", (64, 40)), ("tall.png", (40, 64))):
        Image.new("RGB", size, (90, 140, 30)).save(data / name)
    out = tmp_path / "out"
    _fails(["infer", str(ck), "--data", str(data), "-o", str(out)], capsys, 2,
           "different sizes", "CenterCrop")
    assert not out.exists()
    run(["infer", str(ck), "--data", str(data), "-o", str(out), "-b", "1"])
    assert (out / "pytorch_inference_results.csv").exists()
    with pytest.raises(ConfigError, match="tall.png"):  # INT8 calibration images alike
        load_images([(p, 0) for p in sorted(data.glob("*.png"), reverse=True)], 2,
                    preprocess, "calibration images")
    tensors = [torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).contiguous()
               for p in sorted(data.glob("*.png"))]
    with pytest.raises(ConfigError, match="different sizes"):  # the GPU input pipeline alike
        to_batch(tensors, preprocess, torch.empty((2, 3, 32, 32)))
    # which the commands do not pick for it on a GPU: the CPU pipeline runs each image alone
    assert resolve_pipeline("auto", "cuda:0", preprocess)[0] == "cpu"
    assert resolve_pipeline("auto", "cuda:0", Preprocess.simple(32, 32))[0] == "gpu"
    with pytest.raises(UsageError, match="its own size"):
        resolve_pipeline("gpu", "cuda:0", preprocess)
    served = ServeModel(ck, pipeline="cpu", max_batch=4)
    try:
        items = [served.prepare(Payload(p.name, data=p.read_bytes()))
                 for p in sorted(data.glob("*.png"))]
        assert items[0].shape != items[1].shape
        together = served.run_batch(items)
        alone = [served.run_batch([item])[0] for item in items]
        for row, want in zip(together, alone):
            np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-6)
    finally:
        served.close()

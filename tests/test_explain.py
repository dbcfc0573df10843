"""`pochi explain` and `pochi infer --explain-errors`: Grad-CAM on the trained digits model,
real 32x32 PNGs, and the files a user opens."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pochitrain.cli.main import run
from pochitrain.explain_draw import overlay_size, sheet_size


def _images(digits_dir: Path, digit: str, count: int) -> list[Path]:
    return sorted((digits_dir / "val" / digit).glob("*.png"))[:count]


@pytest.fixture(scope="module")
def run_dir(trained_checkpoint: Path, onnx_export: Callable[..., Path],
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of our own: the trained checkpoint and its ONNX export side by side in
    models/ (copies: the shared files are read-only)."""
    models = tmp_path_factory.mktemp("explain") / "20260101_001" / "models"
    models.mkdir(parents=True)
    shutil.copy2(trained_checkpoint, models / trained_checkpoint.name)
    shutil.copy2(onnx_export(trained_checkpoint), models / "best.onnx")
    return models.parent


def _pochi(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = run(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_explain_writes_overlays_sheet_and_csv(run_dir: Path, digits_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = next((run_dir / "models").glob("*.pth"))
    folder = tmp_path / "data"  # a class folder inside: its name is the true class
    (folder / "7").mkdir(parents=True)
    for path in _images(digits_dir, "7", 2):
        shutil.copy2(path, folder / "7" / path.name)
    files = [*_images(digits_dir, "3", 1), *_images(digits_dir, "0", 1)]
    out = tmp_path / "out"
    code, text = _pochi(["explain", str(checkpoint), *map(str, files), str(folder),
                         "-o", str(out), "--device", "cpu", "--quiet"], capsys)
    assert code == 0, text
    assert "layer2" in text and f"heatmaps from {checkpoint.name}" in text
    pngs = sorted(out.glob("*_gradcam.png"))
    assert len(pngs) == 4
    assert all(Image.open(p).size == overlay_size() for p in pngs)
    assert Image.open(out / "contact_sheet.png").size == sheet_size(4, 4)
    with open(out / "explain.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["heatmap_png"] for r in rows} == {p.name for p in pngs}
    assert rows[0]["predicted_class"] == "3" and rows[1]["predicted_class"] == "0"
    assert [r["true_class"] for r in rows] == ["", "", "7", "7"]
    assert {p.name for p in pngs} >= {f"7_{Path(r['image_path']).stem}_gradcam.png"
                                      for r in rows[2:]}
    assert all(len(r["top3"].split("|")) == 3 for r in rows)
    # a second run into the same folder is refused, the first results stay
    code, text = _pochi(["explain", str(checkpoint), str(files[0]), "-o", str(out)], capsys)
    assert code == 1 and "already holds heatmaps" in text
    assert len(list(out.glob("*_gradcam.png"))) == 4


def test_heatmaps_follow_the_image_and_the_class(run_dir: Path, digits_dir: Path) -> None:
    from pochitrain.data import open_rgb
    from pochitrain.explain.explainer import Explainer, load_images, open_source, target_index
    from pochitrain.model import open_model

    checkpoint = next((run_dir / "models").glob("*.pth"))
    paths = [*_images(digits_dir, "3", 1), *_images(digits_dir, "8", 1)]
    explainer = Explainer(open_source(checkpoint, device="cpu"))
    try:
        loaded = load_images(paths, explainer.source)
        items = explainer.explain(loaded, ["a", "b"])
        five = explainer.explain(loaded, ["a", "b"], target_index("5", explainer.source.class_names))
    finally:
        explainer.close()
    with open_model(checkpoint, device="cpu") as model:  # what pochi infer computes
        batch = np.stack([model.preprocess(open_rgb(p)) for p in paths])
        assert np.array_equal(batch, loaded.inputs)
        probs = model.probabilities(batch)
    assert [it.predicted for it in items] == ["3", "8"]
    assert np.allclose([it.probability for it in items], probs.max(axis=1), atol=1e-5)
    for item, other in zip(items, five):
        top1 = item.top[0].heatmap
        assert top1 is not None and top1.shape == (32, 32) and float(top1.std()) > 0.01
        assert item.image.shape == (32, 32, 3) and item.top[0].overlay.shape == (32, 32, 3)
        assert other.target.class_name == "5" and other.target.heatmap is not None
        assert float(np.abs(other.target.heatmap - top1).max()) > 0.1  # another class, another map
    first, second = items[0].top[0].heatmap, items[1].top[0].heatmap
    assert first is not None and second is not None
    assert float(np.abs(first - second).max()) > 0.1  # another image, another map


def test_onnx_borrows_the_checkpoint_of_its_run(run_dir: Path, digits_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from pochitrain.onnx.inspect import read_onnx
    from pochitrain.tensorrt.engine_file import write_engine

    checkpoint = next((run_dir / "models").glob("*.pth"))
    image = _images(digits_dir, "4", 1)[0]
    out = tmp_path / "onnx"
    code, text = _pochi(["explain", str(run_dir / "models" / "best.onnx"), str(image), "-o",
                         str(out), "--target-class", "9", "--device", "cpu", "--quiet"], capsys)
    assert code == 0, text
    assert f"heatmaps from the checkpoint {checkpoint.name} of the same run" in text
    assert len(list(out.glob("*_gradcam.png"))) == 1
    with open(out / "explain.csv", encoding="utf-8") as f:
        (row,) = csv.DictReader(f)
    assert row["target_class"] == "9" and row["predicted_class"] == "4"
    # an engine's sidecar keeps the ONNX's metadata, and with it the checkpoint
    engine = run_dir / "models" / "best.engine"
    sidecar = {"format": "pochitrain-engine-v1", "backend": "tensorrt_rtx",
               "backend_version": "1", "precision": "fp16", "pattern": 1, "input": {},
               "output": {}, "source_onnx": {}, "build": {},
               "model": read_onnx(run_dir / "models" / "best.onnx")[0].meta.to_dict()}
    write_engine(engine, b"plan", sidecar, overwrite=False)  # never run: explain reads metadata
    code, text = _pochi(["explain", str(engine), str(image), "-o", str(tmp_path / "trt"),
                         "--device", "cpu", "--quiet"], capsys)
    assert code == 0, text
    assert f"heatmaps from the checkpoint {checkpoint.name} of the same run" in text
    assert len(list((tmp_path / "trt").glob("*_gradcam.png"))) == 1
    # the same ONNX without its run: the error names the .pth to pass
    alone = tmp_path / "elsewhere" / "best.onnx"
    alone.parent.mkdir()
    shutil.copy2(run_dir / "models" / "best.onnx", alone)
    code, text = _pochi(["explain", str(alone), str(image), "-o", str(tmp_path / "x")], capsys)
    assert code == 1 and checkpoint.name in text and "pochi explain" in text
    assert "同じ実行のチェックポイント" in text
    assert not (tmp_path / "x").exists()


def test_mistakes_get_clear_messages(run_dir: Path, digits_dir: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = str(next((run_dir / "models").glob("*.pth")))
    image = str(_images(digits_dir, "1", 1)[0])
    out = str(tmp_path / "out")
    cases = [
        (["--layer", "layer9"], 2, "no layer named 'layer9'"),
        (["--layer", "fc"], 2, "does not output a (N, C, H, W) feature map"),
        (["--target-class", "cat"], 2, "no class 'cat'"),
    ]
    for extra, exit_code, needle in cases:
        code, text = _pochi(["explain", checkpoint, image, "-o", out, "--device", "cpu",
                             *extra], capsys)
        assert code == exit_code and needle in text, text
    code, text = _pochi(["explain", checkpoint, str(tmp_path / "missing.png")], capsys)
    assert code == 1 and "not found" in text and "見つかりません" in text
    code, text = _pochi(["explain", str(tmp_path / "none.pth"), image], capsys)
    assert code == 1 and "Model file not found" in text
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # the extra not installed
    code, text = _pochi(["explain", checkpoint, image, "-o", out], capsys)
    assert code == 1 and 'pip install "pochitrain[explain]"' in text
    assert not Path(out).exists()


def test_infer_explain_errors_draws_the_gallery(run_dir: Path, digits_dir: Path,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    (data / "1").mkdir(parents=True)
    (data / "7").mkdir()
    for path in _images(digits_dir, "7", 2):  # sevens filed as ones: mistakes for sure
        shutil.copy2(path, data / "1" / path.name)
    for path in _images(digits_dir, "7", 4)[2:]:
        shutil.copy2(path, data / "7" / path.name)
    out = tmp_path / "results"
    code, text = _pochi(["infer", str(run_dir / "models" / "best.onnx"), "--data", str(data),
                         "-o", str(out), "--explain-errors", "--quiet"], capsys)
    assert code == 0, text
    assert "heatmaps from the checkpoint" in text
    with open(out / "onnx_inference_results.csv", encoding="utf-8") as f:
        wrong = sum(1 for row in csv.DictReader(f) if row["correct"] in ("False", "0", "false"))
    assert wrong >= 2
    assert Image.open(out / "explain_errors.png").size == sheet_size(wrong, 4)


def test_explain_help_imports_neither_torch_nor_opencv() -> None:
    code = ("import sys\nfrom pochitrain.cli.main import build_parser\n"
            "build_parser(verb='explain').parse_args(['explain', 'm.pth', 'x.png'])\n"
            "print(sorted(m for m in ('torch', 'cv2', 'pytorch_grad_cam', 'matplotlib') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout

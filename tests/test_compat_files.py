"""Files in the original pochitrain's formats (built here from reference 1.1 / 3): its
checkpoints, its ONNX files; predictions equal to ours on the same weights."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from tiny import original_config

from pochitrain.cli.main import run
from pochitrain.errors import ConfigError, ModelFileError


def _original_checkpoint(path: Path, model: torch.nn.Module) -> Path:
    """The original's checkpoint: ``model.``-prefixed state dict, no class names / config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "model_state_dict": state, "optimizer_state_dict": {},
                "best_accuracy": 66.67}, path)
    return path


@pytest.fixture(scope="module")
def original_run(compat_data: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> tuple[Path, Path, Path]:
    """(original run folder, its checkpoint, our checkpoint of the same weights)."""
    from pochitrain.checkpoint import save_checkpoint
    from pochitrain.config import load_config, preprocess_from_settings
    from pochitrain.meta import ModelMeta
    from pochitrain.models import build_model

    root = tmp_path_factory.mktemp("orig")
    run_dir = root / "work_dirs" / "20250101_001"
    original_config(run_dir, compat_data)  # its config.py copy in the run folder
    torch.manual_seed(1)
    model = build_model("resnet18", 3).eval()
    original = _original_checkpoint(run_dir / "models" / "best_epoch3.pth", model)
    settings = load_config(run_dir / "config.py")
    meta = ModelMeta(["0", "1", "2"], preprocess_from_settings(settings), "resnet18")
    ours = root / "ours" / "models" / "ours.pth"
    ours.parent.mkdir(parents=True)
    save_checkpoint(ours, model, meta)
    return run_dir, original, ours


def _predictions(out: Path) -> list[tuple[str, str, str]]:
    csv_file = next(out.glob("*_inference_results.csv"))
    with open(csv_file, encoding="utf-8") as f:
        return [(Path(r["image_path"]).name, r["predicted_class"], r["confidence"][:6])
                for r in csv.DictReader(f)]


def test_original_checkpoint_infers_like_ours(original_run: tuple[Path, Path, Path],
                                              compat_data: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _, original, ours = original_run
    data = str(compat_data / "val")
    assert run(["infer", str(original), "-d", data, "-o", str(tmp_path / "a"), "--quiet",
                "--device", "cpu"]) == 0
    said = capsys.readouterr()
    text = said.out + said.err
    assert text.count("Original pochitrain checkpoint") == 1 and "config.py" in text
    assert run(["infer", str(ours), "--data", data, "-o", str(tmp_path / "b"), "--quiet",
                "--device", "cpu"]) == 0
    a, b = _predictions(tmp_path / "a"), _predictions(tmp_path / "b")
    assert len(a) == 6 and a == b


def test_original_checkpoint_exports_and_onnx_agrees(original_run: tuple[Path, Path, Path],
                                                     compat_data: Path,
                                                     tmp_path: Path) -> None:
    from pochitrain.onnx.inspect import read_onnx

    _, original, ours = original_run
    onnx_path = tmp_path / "orig.onnx"
    assert run(["export-onnx", str(original), "--input-size", "32", "32", "-o", str(onnx_path),
                "--opset-version", "17", "--device", "cpu", "--model-name", "resnet18",
                "--num-classes", "3", "--skip-verify"]) == 0
    info, _ = read_onnx(onnx_path)
    assert info.meta is not None and info.meta.class_names == ["0", "1", "2"]
    data = str(compat_data / "val")
    assert run(["infer-onnx", str(onnx_path), "-d", data, "-o", str(tmp_path / "o"),
                "--quiet"]) == 0
    assert run(["infer", str(ours), "-d", data, "-o", str(tmp_path / "p"), "--quiet",
                "--device", "cpu"]) == 0
    assert [r[:2] for r in _predictions(tmp_path / "o")] == \
        [r[:2] for r in _predictions(tmp_path / "p")]


def test_original_onnx_file_uses_the_run_config(original_run: tuple[Path, Path, Path],
                                                compat_data: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The original's export: legacy exporter, input/output names, dynamic batch, no
    metadata; the config is found at <model>/../../config.py."""
    from pochitrain.checkpoint import load_model

    run_dir, _, ours = original_run
    model, _ = load_model(ours)
    onnx_path = run_dir / "models" / "best_epoch3.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(onnx_path), export_params=True,
                      opset_version=17, do_constant_folding=True, input_names=["input"],
                      output_names=["output"], dynamo=False,
                      dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}})
    data = str(compat_data / "val")
    capsys.readouterr()
    assert run(["infer-onnx", str(onnx_path), "-d", data, "-o", str(tmp_path / "o"),
                "--quiet"]) == 0
    said = capsys.readouterr()
    assert (said.out + said.err).count("class names and preprocessing from") == 1
    assert run(["infer", str(ours), "-d", data, "-o", str(tmp_path / "p"), "--quiet",
                "--device", "cpu"]) == 0
    assert [r[:2] for r in _predictions(tmp_path / "o")] == \
        [r[:2] for r in _predictions(tmp_path / "p")]


def test_class_count_differs_from_config(original_run: tuple[Path, Path, Path],
                                         tmp_path: Path) -> None:
    from pochitrain.checkpoint import load_model
    from pochitrain.models import build_model

    run_dir = original_run[0]
    bad = _original_checkpoint(run_dir / "models" / "four.pth", build_model("resnet18", 4))
    try:
        with pytest.raises(ModelFileError) as err:
            load_model(bad)
        assert "4 classes" in err.value.message and "gives 3" in err.value.message
        assert "-c" in err.value.remedy
    finally:
        bad.unlink()


def test_original_checkpoint_without_config(tmp_path: Path) -> None:
    from pochitrain.checkpoint import load_model
    from pochitrain.models import build_model

    lone = _original_checkpoint(tmp_path / "a" / "b" / "best.pth", build_model("resnet18", 3))
    with pytest.raises(ConfigError) as err:
        load_model(lone)
    assert "設定ファイルが見つかりません" in err.value.message
    assert str(tmp_path / "a" / "config.py") in err.value.message
    assert "-c/--config-path" in err.value.remedy
    with pytest.raises(ConfigError) as err:
        load_model(lone, verb="export-onnx")
    assert str(tmp_path / "a" / "b" / "config.py") in err.value.message
    assert run(["export-onnx", str(lone), "--input-size", "32", "32"]) == 2


def test_model_name_option_wins_over_config(original_run: tuple[Path, Path, Path]) -> None:
    """The original let the config's model_name override --model-name (a bug)."""
    from pochitrain.checkpoint import load_model

    with pytest.raises(ModelFileError, match="resnet34"):
        load_model(original_run[1], verb="export-onnx", model_name="resnet34")
    _, meta = load_model(original_run[1], verb="export-onnx", model_name="resnet18")
    assert meta.model_name == "resnet18"


def test_original_onnx_converts(original_run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """pochi convert on the original's ONNX (no metadata): a real TensorRT-RTX engine whose
    sidecar has no model metadata (infer-trt then reads the run's config, like the original)."""
    import json

    pytest.importorskip("tensorrt_rtx_bindings")
    from pochitrain.checkpoint import load_model

    model, _ = load_model(original_run[2])
    onnx_path = tmp_path / "orig.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(onnx_path), opset_version=17,
                      input_names=["input"], output_names=["output"], dynamo=False,
                      dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}})
    assert run(["convert", str(onnx_path)]) == 0
    meta = json.loads((tmp_path / "orig.engine.json").read_text(encoding="utf-8"))
    assert meta["model"] is None and meta["precision"] == "fp32"
    assert meta["input"]["profile"]["opt"] == [1, 3, 32, 32]

"""pochi train on the original pochitrain's sample config: its run-folder files and features."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from tiny import original_config

from pochitrain.training.run import run_training as train


@pytest.fixture(scope="module")
def original_run(compat_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs of the original's sample config (data paths changed, 32x32 images)."""
    folder = tmp_path_factory.mktemp("original_run")
    result = train(original_config(folder, compat_data, epochs=2), progress=False)
    assert result.epochs_run == 2
    return result.run_dir


def test_layer_wise_lr_columns_and_plot(original_run: Path) -> None:
    with open(original_run / "training_metrics.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for group, lr in (("conv1", 0.0001), ("layer4", 0.002), ("fc", 0.01)):
        assert float(rows[0][f"lr_{group}"]) == pytest.approx(lr)
        assert float(rows[1][f"lr_{group}"]) == pytest.approx(lr * 0.95)  # ExponentialLR
    assert (original_run / "layer_wise_lr.png").stat().st_size > 1000


def test_the_originals_metrics_file(original_run: Path) -> None:
    """visualization/training_metrics_<timestamp>.csv as the original writes it: its columns,
    learning_rate the configured base rate under layer-wise LR, percent accuracies."""
    import json

    (found,) = (original_run / "visualization").glob("training_metrics_*.csv")
    with open(found, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(original_run / "training_metrics.csv", encoding="utf-8") as f:
        ours = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "learning_rate", "train_loss", "train_accuracy",
                             "val_loss", "val_accuracy", "lr_conv1", "lr_bn1", "lr_layer1",
                             "lr_layer2", "lr_layer3", "lr_layer4", "lr_fc"]
    base = json.loads((original_run / "run.json").read_text())["settings"]["learning_rate"]
    assert [float(r["learning_rate"]) for r in rows] == [base, base]
    for row, mine in zip(rows, ours):
        for key in ("train_accuracy", "val_accuracy"):
            assert float(row[key]) == pytest.approx(100 * float(mine[key]), abs=1e-4)
        assert float(row["lr_fc"]) == pytest.approx(float(mine["lr_fc"]))
    for suffix in ("_loss.png", "_accuracy.png", "_layer_wise_lr.png"):
        assert found.with_name(found.stem + suffix).stat().st_size > 1000


def test_confusion_log_and_paths(original_run: Path, compat_data: Path) -> None:
    text = (original_run / "confusion_matrix.log").read_text(encoding="utf-8").splitlines()
    assert text[0] == "epoch1" and text[4] == "epoch2" and len(text) == 8
    counts = [[int(v) for v in line.split()] for line in text[1:4]]
    assert [sum(r) for r in counts] == [2, 2, 2]  # 2 val images per true class
    train_paths = (original_run / "paths" / "train.txt").read_text(encoding="utf-8").split()
    val_paths = (original_run / "paths" / "val.txt").read_text(encoding="utf-8").split()
    assert len(train_paths) == 12 and len(val_paths) == 6
    assert all(Path(p).is_file() and str(compat_data / "val") in p for p in val_paths)


def test_gradient_trace_csv(original_run: Path) -> None:
    with open(original_run / "gradient_trace.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    assert header[0] == "epoch" and [r[0] for r in rows[1:]] == ["1", "2"]
    assert {"layer1", "layer2", "layer3", "layer4", "conv1.weight", "bn1.weight"} <= set(header)
    assert not any(h.startswith("fc.") or h.endswith(".bias") for h in header)  # excluded
    assert all(float(v) > 0 for v in rows[1][1:])
    (original,) = (original_run / "visualization").glob("gradient_trace_*.csv")  # its place
    assert original.read_bytes() == (original_run / "gradient_trace.csv").read_bytes()


def test_image_size_taken_from_training_images(original_run: Path) -> None:
    import json

    record = json.loads((original_run / "run.json").read_text(encoding="utf-8"))
    assert record["input_size"] == [32, 32]  # val_transform has no Resize


def test_overrides_of_automatic_choices(compat_data: Path) -> None:
    import torch

    from pochitrain.data import scan_image_folder
    from pochitrain.training.data import make_loader
    from pochitrain.training.run import cudnn_autotune

    folder = scan_image_folder(compat_data / "train")
    loader = make_loader(folder, lambda x: x, batch_size=2, shuffle=False, num_workers=0,
                         device="cuda", seed=0, pin_memory=False)
    assert loader.pin_memory is False
    before = torch.backends.cudnn.benchmark
    with cudnn_autotune("cuda", False):
        assert torch.backends.cudnn.benchmark is False
    with cudnn_autotune("cpu", True):
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark == before


def test_metrics_export_off(compat_data: Path, tmp_path: Path) -> None:
    config = original_config(tmp_path, compat_data, **{
        "enable_metrics_export = True": "enable_metrics_export = False",
        "enable_gradient_tracking = True": "enable_gradient_tracking = False",
        "enable_layer_wise_lr = True": "enable_layer_wise_lr = False"})
    run_dir = train(config, progress=False).run_dir
    assert not (run_dir / "training_metrics.csv").exists()
    assert not (run_dir / "loss.png").exists() and (run_dir / "confusion_matrix.log").is_file()
    assert not list(run_dir.glob("visualization/training_metrics_*"))


def test_later_commands_work_on_the_original_configs_run(original_run: Path,
                                                        compat_data: Path,
                                                        tmp_path: Path) -> None:
    """export-onnx -> infer-onnx -> pochi infer -> vis-grad on the run's own outputs."""
    from pochitrain.cli.main import run

    best = next((original_run / "models").glob("best_epoch*.pth"))
    assert run(["export-onnx", str(best), "--overwrite"]) == 0  # verified vs PyTorch
    onnx_path = best.with_suffix(".onnx")  # beside the checkpoint, as the original
    assert run(["infer-onnx", str(onnx_path), "-o", str(tmp_path / "onnx"), "--quiet"]) == 0
    assert run(["infer", str(best), "-o", str(tmp_path / "pt"), "--quiet",
                "--device", "cpu"]) == 0
    for folder in ("onnx", "pt"):
        with open(next((tmp_path / folder).glob("*_inference_results.csv")),
                  encoding="utf-8") as f:
            assert len(list(csv.DictReader(f))) == 6  # the config's val_data_root
    assert (tmp_path / "pt" / "model_info.json").is_file()
    assert run(["vis-grad", str(original_run / "gradient_trace.csv"), "-o",
                str(tmp_path / "grad")]) == 0
    assert len(list((tmp_path / "grad").glob("*.png"))) == 10

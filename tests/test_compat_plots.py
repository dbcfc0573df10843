"""Plots: Japanese text renders (no missing-glyph warning), confusion_matrix_config, the
layer-wise LR plot's log / linear scale, model_info.json."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

JAPANESE = ["猫", "犬", "ひよこ", "カメ"]
STYLE = {"title": "混同行列", "xlabel": "予測ラベル", "ylabel": "実際ラベル", "fontsize": 14,
         "title_fontsize": 16, "label_fontsize": 12, "figsize": (8, 6), "cmap": "Greens"}


def _glyph_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "Glyph" in str(w.message)
            or "missing from" in str(w.message)]


def test_japanese_class_names_render_without_missing_glyphs(tmp_path: Path) -> None:
    from pochitrain.reports import plot_confusion

    cm = np.array([[5, 1, 0, 0], [0, 6, 0, 1], [1, 0, 4, 0], [0, 0, 0, 7]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion(cm, JAPANESE, tmp_path / "cm.png", "pytorch: 正解率 88%", STYLE)
    assert _glyph_warnings(caught) == []
    from PIL import Image

    with Image.open(tmp_path / "cm.png") as image:
        assert image.size == (960, 720)  # figsize (8, 6) at 120 dpi


def test_without_cjk_font_matplotlib_would_warn(tmp_path: Path) -> None:
    """The check above is meaningful: DejaVu Sans alone draws boxes and warns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"font.family": "DejaVu Sans"}), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig, ax = plt.subplots()
        ax.set_title("混同行列")
        fig.savefig(tmp_path / "boxes.png")
        plt.close(fig)
    assert _glyph_warnings(caught)


def test_layer_wise_lr_plot_log_and_linear(tmp_path: Path) -> None:
    from pochitrain.training_plots import EpochRow, plot_group_lrs

    rows = [EpochRow(e, 1e-3, 1.0, 0.5, 1.0, 0.5, 10.0, 1.0,
                     {"layer1": 1e-4 * 0.9 ** e, "fc": 1e-2 * 0.9 ** e}) for e in (1, 2, 3)]
    plot_group_lrs(rows, tmp_path / "log.png", log_scale=True)
    plot_group_lrs(rows, tmp_path / "linear.png", log_scale=False)
    assert (tmp_path / "log.png").read_bytes() != (tmp_path / "linear.png").read_bytes()


def test_model_info_json(tmp_path: Path) -> None:
    import torch

    from pochitrain.models import build_model
    from pochitrain.reports import write_model_info

    path = tmp_path / "orig.pth"
    state = {f"model.{k}": v for k, v in build_model("resnet18", 2).state_dict().items()}
    torch.save({"epoch": 12, "model_state_dict": state, "best_accuracy": 91.5}, path)
    out = write_model_info(tmp_path, path, "resnet18", 2, "cpu")
    assert json.loads(out.read_text(encoding="utf-8")) == {
        "model_name": "resnet18", "num_classes": 2, "device": "cpu", "model_path": str(path),
        "best_accuracy": 91.5, "epoch": 12}


def test_infer_writes_model_info_and_uses_confusion_config(untrained_checkpoint: Path,
                                                           digits_dir: Path,
                                                           tmp_path: Path) -> None:
    import shutil

    from pochitrain.cli.main import run

    data = tmp_path / "data"
    for cls in ("0", "1"):
        (data / cls).mkdir(parents=True)
        for f in sorted((digits_dir / "val" / cls).glob("*.png"))[:2]:
            shutil.copy(f, data / cls / f.name)
    config = tmp_path / "config.py"
    config.write_text("from torchvision import transforms\nval_transform = transforms.Compose("
                      "[transforms.Resize((32, 32)), transforms.ToTensor()])\n"
                      f"confusion_matrix_config = {STYLE!r}\n", encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(["infer", str(untrained_checkpoint), "-d", str(data), "-c", str(config),
                    "-o", str(tmp_path / "out"), "--quiet", "--device", "cpu"]) == 0
    assert _glyph_warnings(caught) == []
    info = json.loads((tmp_path / "out" / "model_info.json").read_text(encoding="utf-8"))
    assert info["model_name"] == "resnet18" and info["num_classes"] == 10
    assert info["device"] == "cpu" and info["model_path"] == str(untrained_checkpoint)
    from PIL import Image

    with Image.open(tmp_path / "out" / "confusion_matrix.png") as image:
        assert image.size == (960, 720)


@pytest.mark.parametrize("name", ["loss.png"])
def test_metric_plots_use_cjk_font(name: str, tmp_path: Path) -> None:
    from pochitrain.plotting import use_cjk_font

    assert use_cjk_font() is not None  # matplotlib-fontja (a dependency) is installed

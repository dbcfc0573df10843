"""The original's output files, labels and units on real runs: what its users' scripts parse
is written as it wrote it; ours comes beside it (extra lines, columns, keys), never instead."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from pochitrain.cli.main import run

# The original's summary lines, in its order (its labels, units and decimals).
ORIGINAL_SUMMARY = [
    r"モデル: (?P<model>.+)",
    r"データ: (?P<data>.+)",
    r"入力解像度: (?P<w>\d+)x(?P<h>\d+) \(WxH\)",
    r"入力チャンネル: 3",
    r"サンプル数: (?P<n>\d+)",
    r"精度: (?P<acc>\d+\.\d{2})%",
    r"平均推論時間: \d+\.\d{2} ms/image \(純粋推論のみ\)",
    r"スループット: \d+\.\d images/sec \(純粋推論ベース\)",
    r"平均全処理時間: \d+\.\d{2} ms/image \(End-to-End\)",
    r"スループット: \d+\.\d images/sec \(実効性能ベース\)",
    r"計測サンプル数: (?P<measured>\d+) \(ウォームアップ除外: \d+\)",
]


def test_training_run_has_the_originals_metrics_file(trained_run: Path) -> None:
    """visualization/training_metrics_<YYYYMMDD_HHMMSS>.csv with the original's columns, the
    accuracies in percent, and its _loss / _accuracy PNGs beside it."""
    (found,) = (trained_run / "visualization").glob("training_metrics_*.csv")
    assert re.fullmatch(r"training_metrics_\d{8}_\d{6}", found.stem)
    with open(found, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(trained_run / "training_metrics.csv", encoding="utf-8") as f:
        ours = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "learning_rate", "train_loss", "train_accuracy",
                             "val_loss", "val_accuracy"]
    assert [r["epoch"] for r in rows] == ["1", "2"] and float(rows[0]["learning_rate"]) == 0.001
    for row, mine in zip(rows, ours):
        for key in ("train_accuracy", "val_accuracy"):
            assert float(row[key]) == pytest.approx(100 * float(mine[key]), abs=1e-4)
        assert float(row["train_loss"]) == pytest.approx(float(mine["train_loss"]), rel=1e-5)
    best = json.loads((trained_run / "run.json").read_text(encoding="utf-8"))
    assert max(float(r["val_accuracy"]) for r in rows) > 50  # percent, not a fraction
    assert best["best_val_accuracy"] <= 1.0  # ours stays a fraction
    for suffix in ("_loss.png", "_accuracy.png"):
        assert found.with_name(found.stem + suffix).read_bytes()[:4] == b"\x89PNG"


def test_inference_writes_the_originals_summary_and_report(trained_checkpoint: Path,
                                                           digits_dir: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    data = digits_dir / "val"
    assert run(["infer", str(trained_checkpoint), "--data", str(data), "-o", str(out),
                "--quiet"]) == 0
    lines = (out / "pytorch_inference_summary.txt").read_text(encoding="utf-8").splitlines()
    found = [re.fullmatch(pattern, line) for pattern, line in zip(ORIGINAL_SUMMARY, lines)]
    assert all(found), list(zip(ORIGINAL_SUMMARY, lines))
    fields = {k: v for m in found if m for k, v in m.groupdict().items()}
    with open(out / "pytorch_inference_results.csv", encoding="utf-8") as f:
        results = list(csv.DictReader(f))
    correct = sum(r["correct"] == "True" for r in results)
    assert fields["model"] == str(trained_checkpoint) and fields["data"] == str(data)
    assert (fields["w"], fields["h"]) == ("32", "32")
    assert int(fields["n"]) == int(fields["measured"]) == len(results)
    assert fields["acc"] == f"{100 * correct / len(results):.2f}"
    assert any(line.startswith("精度 / Accuracy: ") for line in lines)  # ours follows

    with open(out / "classification_report.csv", encoding="utf-8") as f:
        report = list(csv.reader(f))
    classes = sorted(p.name for p in data.iterdir())
    assert report[0] == ["class", "precision", "recall", "f1-score", "support"]
    assert [r[0] for r in report[1:]] == [*classes, "macro avg", "weighted avg", "accuracy"]
    assert report[-2][4] == str(len(results))

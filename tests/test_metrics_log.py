"""training.metrics.MetricsLog: the CSV every epoch, the pictures at most every PLOT_EVERY_S
seconds and at the end."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from pochitrain.training import metrics
from pochitrain.training.metrics import EpochRow, MetricsLog


def _row(epoch: int) -> EpochRow:
    return EpochRow(epoch, 0.01, 1.0 / epoch, 0.5, 1.2 / epoch, 0.4, 900.0, 0.7)


def test_fast_epochs_write_the_csv_each_time_and_draw_at_the_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "PLOT_EVERY_S", float("inf"))  # however slow the machine
    log = MetricsLog(tmp_path)
    for epoch in (1, 2, 3):
        log.add(_row(epoch))
        with (tmp_path / "training_metrics.csv").open() as f:
            assert len(list(csv.DictReader(f))) == epoch
    assert not (tmp_path / "loss.png").exists()  # the interval has not passed: not yet
    log.close()
    for name in ("loss.png", "accuracy.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG"
    stamp = (tmp_path / "loss.png").stat().st_mtime_ns
    log.close()  # nothing new: not drawn again
    assert (tmp_path / "loss.png").stat().st_mtime_ns == stamp


def test_slow_epochs_are_drawn_as_they_end(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "PLOT_EVERY_S", 0.0)
    log = MetricsLog(tmp_path)
    log.add(_row(1))
    assert (tmp_path / "loss.png").is_file() and (tmp_path / "accuracy.png").is_file()


def test_no_pictures_when_export_is_off_or_not_the_main_rank(tmp_path: Path) -> None:
    off = MetricsLog(tmp_path / "off", enabled=False)
    rank1 = MetricsLog(tmp_path / "rank1", plots=False)
    (tmp_path / "rank1").mkdir()
    for log in (off, rank1):
        log.add(_row(1))
        log.close()
    assert not list(tmp_path.rglob("*.png"))

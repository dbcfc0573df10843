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
    assert not list(tmp_path.rglob("visualization"))  # the original's files: main rank only


def test_the_originals_csv_and_pictures_beside_ours(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """visualization/training_metrics_<YYYYMMDD_HHMMSS>.csv: the original's columns, percent
    accuracies, ``learning_rate`` the configured rate under layer-wise LR, ``lr_<group>`` after;
    its _loss / _accuracy / _layer_wise_lr PNGs with it."""
    monkeypatch.setattr(metrics, "PLOT_EVERY_S", float("inf"))
    log = MetricsLog(tmp_path, base_lr=0.001)
    for epoch in (1, 2):
        log.add(EpochRow(epoch, 0.01 / epoch, 1.5 / epoch, 0.58, 1.25 / epoch, 0.875, 900.0,
                         0.7, {"conv1": 0.0001, "fc": 0.01 / epoch}))
    log.close()
    (found,) = (tmp_path / "visualization").glob("training_metrics_*.csv")
    assert found.stem[len("training_metrics_"):].replace("_", "").isdigit()
    assert len(found.stem) == len("training_metrics_YYYYMMDD_HHMMSS")
    with found.open(encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "learning_rate", "train_loss", "train_accuracy", "val_loss",
                       "val_accuracy", "lr_conv1", "lr_fc"]
    assert rows[1] == ["1", "0.001", "1.5", "58.0", "1.25", "87.5", "0.0001", "0.01"]
    assert rows[2] == ["2", "0.001", "0.75", "58.0", "0.625", "87.5", "0.0001", "0.005"]
    for suffix in ("_loss.png", "_accuracy.png", "_layer_wise_lr.png"):
        with Image.open(found.with_name(found.stem + suffix)) as im:
            assert im.format == "PNG"


def test_the_originals_learning_rate_is_the_optimizer_rate_without_groups(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "PLOT_EVERY_S", float("inf"))
    log = MetricsLog(tmp_path, base_lr=0.5)  # one group: the scheduled rate
    log.add(_row(1))
    (found,) = (tmp_path / "visualization").glob("training_metrics_*.csv")
    with found.open(encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["learning_rate"], row["train_accuracy"], row["val_accuracy"]) == (
        "0.01", "50.0", "40.0")


class _Helper:
    """Draws in this process, as the plot helper process would, and says what it was asked."""

    def __init__(self, works: bool = True) -> None:
        self.works, self.jobs, self.closed = works, [], False

    def draw(self, name: str, *args: object) -> bool:
        from pochitrain import training_plots

        self.jobs.append(name)
        if self.works:
            getattr(training_plots, name.rpartition(":")[2])(*args)
        return self.works

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("works", [True, False])
def test_the_last_pictures_go_to_the_helper_else_are_drawn_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, works: bool) -> None:
    monkeypatch.setattr(metrics, "PLOT_EVERY_S", float("inf"))
    helper = _Helper(works)
    log = MetricsLog(tmp_path, helper=helper)
    log.add(_row(1))
    log.close()
    assert helper.jobs == ["pochitrain.training_plots:draw_pictures"] and not helper.closed
    assert (tmp_path / "loss.png").is_file() and (tmp_path / "accuracy.png").is_file()
    assert (tmp_path / "visualization" / (log.original_csv.stem + "_loss.png")).is_file()


def test_a_run_that_draws_itself_lets_the_helper_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "PLOT_EVERY_S", 0.0)
    helper = _Helper()
    log = MetricsLog(tmp_path, helper=helper)
    log.add(_row(1))  # drawn here: matplotlib is imported in this process from now on
    assert helper.closed and helper.jobs == [] and (tmp_path / "loss.png").is_file()
    log.add(_row(2))
    log.close()
    assert helper.jobs == []

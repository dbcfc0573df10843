"""Per-epoch metrics: training_metrics.csv plus loss.png / accuracy.png.

With layer-wise learning rates (config ``enable_layer_wise_lr``) the CSV gains one
``lr_<group>`` column per parameter group and ``layer_wise_lr.png`` plots them (log or linear
scale per ``layer_wise_lr_config['graph_config']['use_log_scale']``, as in the original).

The original's files are written beside them, as it wrote them, for the scripts that read
those: ``visualization/training_metrics_<YYYYMMDD_HHMMSS>.csv`` (``ORIGINAL_COLUMNS``,
accuracies in percent, ``learning_rate`` the base rate) and its ``_loss.png`` /
``_accuracy.png`` / ``_layer_wise_lr.png``.
"""

from __future__ import annotations

import csv
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from pochitrain.training_plots import EpochRow, draw_pictures
from pochitrain.workspace import atomic_file, local_now

METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                  "images_per_second", "seconds")
ORIGINAL_COLUMNS = ("epoch", "learning_rate", "train_loss", "train_accuracy", "val_loss",
                    "val_accuracy")
ORIGINAL_DIR = "visualization"
# our picture -> the suffix of the original's copy of it
ORIGINAL_PNGS = {"loss.png": "_loss.png", "accuracy.png": "_accuracy.png",
                 "layer_wise_lr.png": "_layer_wise_lr.png"}


# Pictures are redrawn at most this often during training (and always at the end): drawing
# two PNGs in the training process can take longer than a short GPU epoch, which would
# otherwise wait for it after every epoch.
PLOT_EVERY_S = 15.0


class Helper(Protocol):
    """What the log uses of ``plot_helper.PlotHelper``."""

    def draw(self, name: str, *args: Any) -> bool: ...

    def close(self) -> None: ...


class MetricsLog:
    """training_metrics.csv, rewritten (atomically) every epoch, and loss.png / accuracy.png
    (layer_wise_lr.png), redrawn when ``PLOT_EVERY_S`` have passed and by :meth:`close`."""

    def __init__(self, run_dir: Path, plots: bool = True, enabled: bool = True,
                 lr_log_scale: bool = True, base_lr: float | None = None,
                 helper: Helper | None = None) -> None:
        self.run_dir = run_dir
        # a started plot_helper.PlotHelper: it draws the last pictures, unless the run is long
        # enough to draw some itself (matplotlib is then imported here: the helper is let go)
        self.helper = helper
        self.rows: list[EpochRow] = []
        self.plots = plots
        self.enabled = enabled  # config enable_metrics_export
        self.lr_log_scale = lr_log_scale
        self.csv_path = run_dir / "training_metrics.csv"
        # the original's learning_rate column holds the configured rate under layer-wise LR
        self.base_lr = base_lr
        stem = f"training_metrics_{local_now().strftime('%Y%m%d_%H%M%S')}"
        self.original_csv = run_dir / ORIGINAL_DIR / f"{stem}.csv"
        self._drawn_at = time.monotonic()  # training starts: the first picture after 15 s
        self._drawn_rows = 0

    def add(self, row: EpochRow) -> None:
        self.rows.append(row)
        if not self.enabled:
            return
        self._write_csv()
        if time.monotonic() - self._drawn_at >= PLOT_EVERY_S:
            self._draw()

    def close(self) -> None:
        """Draw the pictures of every epoch so far (once; the CSV is always up to date)."""
        if self.enabled and self._drawn_rows < len(self.rows):
            self._draw(last=True)

    def _draw(self, last: bool = False) -> None:
        if self.plots:
            args = (self.rows, self.run_dir, self.lr_log_scale)
            drawn = (last and self.helper is not None
                     and self.helper.draw("pochitrain.training_plots:draw_pictures", *args))
            if not drawn:
                draw_pictures(*args)
            self._copy_original_pngs()
        if not last and self.helper is not None:  # matplotlib is imported here now
            self.helper.close()
            self.helper = None
        self._drawn_at, self._drawn_rows = time.monotonic(), len(self.rows)

    def _write_csv(self) -> None:
        groups = list(self.rows[0].group_lrs)
        write_rows(self.csv_path, list(METRIC_COLUMNS) + [f"lr_{g}" for g in groups], (
            [r.epoch, f"{r.lr:.6g}"]
            + [f"{getattr(r, c):.6f}" for c in METRIC_COLUMNS[2:6]]
            + [f"{r.images_per_second:.1f}", f"{r.seconds:.2f}"]
            + [f"{r.group_lrs.get(g, float('nan')):.6g}" for g in groups] for r in self.rows))
        if self.plots:  # the main rank only: each process would stamp its own file name
            self._write_original_csv()

    def _write_original_csv(self) -> None:
        """The original's columns and units: accuracies in percent, plain float text."""
        self.original_csv.parent.mkdir(parents=True, exist_ok=True)
        groups = original_group_order(list(self.rows[0].group_lrs))
        write_rows(self.original_csv, list(ORIGINAL_COLUMNS) + [f"lr_{g}" for g in groups], (
            [r.epoch, self.base_lr if r.group_lrs and self.base_lr is not None else r.lr,
             r.train_loss, percent(r.train_accuracy), r.val_loss, percent(r.val_accuracy)]
            + [r.group_lrs.get(g, "") for g in groups] for r in self.rows))

    def _copy_original_pngs(self) -> None:
        for ours, suffix in ORIGINAL_PNGS.items():
            if (self.run_dir / ours).is_file():
                stem = self.original_csv.stem
                shutil.copyfile(self.run_dir / ours, self.original_csv.with_name(stem + suffix))


def write_rows(path: Path, header: list[str], rows: Iterable[list[Any]]) -> None:
    """A CSV file, written atomically: ``header``, then ``rows``."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


# The original's groups came in the order of a ResNet's parameters (stem first).
RESNET_ORDER = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")


def original_group_order(groups: list[str]) -> list[str]:
    """Layer groups in the original's column order; others keep theirs, after them."""
    known = [g for g in RESNET_ORDER if g in groups]
    return known + [g for g in groups if g not in RESNET_ORDER]


def percent(fraction: float) -> float:
    """A fraction as the original's percent (rounded so 0.58 gives 58.0, not 57.99...)."""
    return round(100.0 * fraction, 10)

"""Per-epoch metrics: training_metrics.csv plus loss.png / accuracy.png."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                  "images_per_second", "seconds")


@dataclass
class EpochRow:
    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    images_per_second: float
    seconds: float


class MetricsLog:
    """training_metrics.csv plus loss.png / accuracy.png, rewritten (atomically) every epoch."""

    def __init__(self, run_dir: Path, plots: bool = True) -> None:
        self.run_dir = run_dir
        self.rows: list[EpochRow] = []
        self.plots = plots
        self.csv_path = run_dir / "training_metrics.csv"

    def add(self, row: EpochRow) -> None:
        self.rows.append(row)
        self._write_csv()
        if self.plots:
            plot_metrics(self.rows, self.run_dir)

    def _write_csv(self) -> None:
        from pochitrain.workspace import atomic_path

        with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="",
                                                     encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(METRIC_COLUMNS)
            for r in self.rows:
                d = asdict(r)
                writer.writerow([d["epoch"], f"{d['lr']:.6g}"]
                                + [f"{d[c]:.6f}" for c in METRIC_COLUMNS[2:6]]
                                + [f"{d['images_per_second']:.1f}", f"{d['seconds']:.2f}"])


def plot_metrics(rows: list[EpochRow], out_dir: Path) -> None:
    """loss.png and accuracy.png: train and val curves over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pochitrain.workspace import atomic_path

    epochs = [r.epoch for r in rows]
    for name, train_key, val_key, label in (
        ("loss.png", "train_loss", "val_loss", "loss"),
        ("accuracy.png", "train_accuracy", "val_accuracy", "accuracy"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        ax.plot(epochs, [getattr(r, train_key) for r in rows], "o-", label=f"train {label}")
        ax.plot(epochs, [getattr(r, val_key) for r in rows], "s-", label=f"val {label}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)

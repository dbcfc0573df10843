"""The training run's pictures, from its per-epoch rows: loss.png / accuracy.png, and
layer_wise_lr.png under layer-wise learning rates.

Outside ``pochitrain.training`` so that the plot helper process (``plot_helper``) draws them
without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pochitrain.plotting import figure, tight_layout
from pochitrain.workspace import atomic_file


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
    group_lrs: dict[str, float] = field(default_factory=dict)  # layer-wise LR: group -> lr


def draw_pictures(rows: list[EpochRow], run_dir: Path, lr_log_scale: bool = True) -> None:
    """loss.png and accuracy.png, and layer_wise_lr.png under layer-wise rates."""
    plot_metrics(rows, run_dir)
    if rows[-1].group_lrs:
        plot_group_lrs(rows, run_dir / "layer_wise_lr.png", lr_log_scale)


def plot_metrics(rows: list[EpochRow], out_dir: Path) -> None:
    """loss.png and accuracy.png: train and val curves over epochs."""
    epochs = [r.epoch for r in rows]
    for name, train_key, val_key, label in (
        ("loss.png", "train_loss", "val_loss", "loss"),
        ("accuracy.png", "train_accuracy", "val_accuracy", "accuracy"),
    ):
        fig = figure(figsize=(6, 4), dpi=100)
        ax = fig.subplots()
        ax.plot(epochs, [getattr(r, train_key) for r in rows], "o-", label=f"train {label}")
        ax.plot(epochs, [getattr(r, val_key) for r in rows], "s-", label=f"val {label}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per epoch")
        ax.legend()
        _save(fig, ax, out_dir / name)


def plot_group_lrs(rows: list[EpochRow], path: Path, log_scale: bool = True) -> None:
    """One line per parameter group (tab10 up to 10 groups, else tab20), as the original."""
    from matplotlib import colormaps

    groups = list(rows[0].group_lrs)
    cmap = colormaps["tab10" if len(groups) <= 10 else "tab20"]
    epochs = [r.epoch for r in rows]
    fig = figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    for i, group in enumerate(groups):
        ax.plot(epochs, [r.group_lrs.get(group, float("nan")) for r in rows], "o-",
                color=cmap(i % cmap.N), label=group)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate" + (" (log scale)" if log_scale else ""))
    ax.set_title("layer-wise learning rates")
    ax.legend(fontsize=8, ncol=2)
    _save(fig, ax, path)


def _save(fig: Any, ax: Any, path: Path) -> None:
    ax.grid(alpha=0.3)
    tight_layout(fig)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")

"""What a training run records beside the metrics CSV, as the original pochitrain did.

``paths/train.txt`` and ``paths/val.txt`` (one image path per line, written at the start),
``confusion_matrix.log`` (the validation confusion matrix, appended every epoch),
TensorBoard event files (config ``enable_tensorboard``) and the gradient trace CSV (config
``enable_gradient_tracking``). ``fit`` calls ``after_backward`` after each backward pass and
``epoch_end`` after each validated epoch; the train pipeline calls ``close`` at the end.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pochitrain.training.gradients import GradientTracker
from pochitrain.training.tensorboard import TensorBoardLog
from pochitrain.workspace import atomic_write_text, local_now

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from pochitrain.config import Settings
    from pochitrain.data import ImageFolder
    from pochitrain.training.epoch import EpochStats
    from pochitrain.training.metrics import EpochRow

CONFUSION_LOG = "confusion_matrix.log"


def write_paths(run_dir: Path, train: ImageFolder, val: ImageFolder) -> None:
    """paths/train.txt and paths/val.txt: the images of each split, one path per line."""
    folder = run_dir / "paths"
    folder.mkdir(exist_ok=True)
    for name, images in (("train.txt", train), ("val.txt", val)):
        atomic_write_text(folder / name, "".join(f"{p}\n" for p, _ in images.samples))


def format_confusion(epoch: int, matrix: np.ndarray) -> str:
    """``epoch{N}`` then one row per true class (columns: predicted), as the original."""
    rows = matrix.tolist()
    width = max(len(str(v)) for row in rows for v in row)
    lines = [f"epoch{epoch}"]
    lines += [" ".join(str(v).rjust(width) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


class RunObserver:
    def __init__(self, run_dir: Path, class_names: list[str], *,
                 tensorboard: TensorBoardLog | None = None,
                 gradients: GradientTracker | None = None) -> None:
        self.run_dir = run_dir
        self.num_classes = len(class_names)
        self.tensorboard = tensorboard
        self.gradients = gradients
        self.after_backward: Callable[[], None] | None = (
            gradients.after_backward if gradients is not None else None)
        (run_dir / CONFUSION_LOG).write_text("", encoding="utf-8")

    def epoch_end(self, row: EpochRow, val_stats: EpochStats) -> None:
        if val_stats.confusion is not None:
            with open(self.run_dir / CONFUSION_LOG, "a", encoding="utf-8") as f:
                f.write(format_confusion(row.epoch, val_stats.confusion))
        if self.tensorboard is not None:
            self.tensorboard.log(row)
        if self.gradients is not None:
            self.gradients.epoch_end(row.epoch)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.gradients is not None and self.gradients.csv_path.is_file():
            copy_original_gradient_trace(self.gradients.csv_path, self.run_dir)


def copy_original_gradient_trace(csv_path: Path, run_dir: Path) -> Path:
    """The trace where the original wrote it too (visualization/gradient_trace_<timestamp>.csv,
    the same columns), for scripts written for it."""
    target = run_dir / "visualization" / f"gradient_trace_{local_now():%Y%m%d_%H%M%S}.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(csv_path, target)
    return target


def build_observer(settings: Settings, run_dir: Path, data: Any, model: nn.Module) -> RunObserver:
    """The observer for a run folder; writes paths/*.txt now."""
    write_paths(run_dir, data.train, data.val)
    tensorboard = gradients = None
    if settings.enable_tensorboard:
        tensorboard = TensorBoardLog(run_dir / "tensorboard" / run_dir.name)
    if settings.enable_gradient_tracking:
        gradients = GradientTracker(model, run_dir / "gradient_trace.csv",
                                    **settings.gradient_tracking_config)
    return RunObserver(run_dir, data.class_names, tensorboard=tensorboard, gradients=gradients)

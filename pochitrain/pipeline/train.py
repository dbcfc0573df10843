"""``pochi train``: config -> work_dirs/YYYYMMDD_NNN/ with checkpoints, metrics and plots.

The run itself (and its folder's layout) is ``training.run.run_training``, which
``pochi optimize`` runs per trial too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pochitrain.training.run import TrainResult, run_training

if TYPE_CHECKING:
    from pochitrain.training.fit import EpochCallback

__all__ = ["TrainResult", "train"]


def train(config: Path | str, *, overrides: dict[str, Any] | None = None,
          work_dir: Path | str | None = None, progress: bool = True,
          on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train from a config file; see the module docstring for what is written.

    ``overrides`` replace config keys (validated like the file); ``work_dir`` replaces the
    config's work_dir (relative to the current directory); ``on_epoch`` see ``training.fit``.
    Under torchrun / ``pochi train --gpus N`` every rank runs this; only rank 0 writes.
    """
    return run_training(config, overrides=overrides, work_dir=work_dir, progress=progress,
                        on_epoch=on_epoch)

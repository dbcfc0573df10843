"""``pochi train``: config -> work_dirs/YYYYMMDD_NNN/ with checkpoints, metrics and plots.

The run itself (and its folder's layout) is ``training.run.run_training``, which
``pochi optimize`` runs per trial too; the verb is that function under its public name.
"""

from __future__ import annotations

from pochitrain.training.run import TrainResult, run_training

__all__ = ["TrainResult", "train"]

train = run_training

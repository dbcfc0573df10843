"""Training: data loading, optimizers and schedulers, precision, one epoch, the epoch loop
(``fit``) with its checkpoint keeper, and metrics (CSV + PNG).

Device-aware from the start: batches are copied with ``non_blocking=True`` (useful with the
pinned memory the loaders use on CUDA); ``run_epoch`` takes ``amp_dtype`` (autocast) and
``channels_last``; ``resolve_precision`` turns the config keys ``mixed_precision`` and
``channels_last`` into those for a device (bf16 + channels_last on GPUs with bf16, both off on
the CPU; fp16 adds a GradScaler).
"""

# ruff: noqa: F401 - re-exports
from pochitrain.training.data import (
    Batch,
    ImageDataset,
    collate_skipping,
    make_loader,
    seed_everything,
)
from pochitrain.training.epoch import EpochStats, run_epoch, stop_on_ctrl_c
from pochitrain.training.fit import CheckpointKeeper, FitOutcome, FitSetup, fit
from pochitrain.training.metrics import METRIC_COLUMNS, EpochRow, MetricsLog, plot_metrics
from pochitrain.training.optim import EarlyStopping, build_optimizer, build_scheduler
from pochitrain.training.precision import Precision, resolve_precision

"""Training: data loading, optimizers and schedulers, precision, one epoch, the epoch loop
(``fit``) with its checkpoint keeper, and metrics (CSV + PNG); ``training.run`` trains from a
config."""

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
from pochitrain.training.metrics import METRIC_COLUMNS, EpochRow, MetricsLog
from pochitrain.training.optim import EarlyStopping, build_optimizer, build_scheduler
from pochitrain.training.precision import Precision, resolve_precision
from pochitrain.training_plots import plot_metrics

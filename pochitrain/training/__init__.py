"""Training: data loading, optimizers and schedulers, precision, one epoch, the epoch loop
(``fit``) with its checkpoint keeper, and metrics (CSV + PNG); ``training.run`` trains from a
config."""

# ruff: noqa: F401 - re-exports
from pochitrain.training.data import Batch, collate_skipping, make_loader, seed_everything
from pochitrain.training.epoch import EpochStats, run_epoch, stop_on_ctrl_c
from pochitrain.training.fit import CheckpointKeeper, FitSetup, fit
from pochitrain.training.metrics import MetricsLog
from pochitrain.training.optim import EarlyStopping, build_optimizer, build_scheduler
from pochitrain.training.precision import resolve_precision

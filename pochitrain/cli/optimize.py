"""`pochi optimize`: hyperparameter search with Optuna (the config's ``optuna`` dict)."""

from __future__ import annotations

import argparse

from pochitrain.cli.common import add_config, positive_int

DESCRIPTION = """\
Search hyperparameters with Optuna: each trial trains the config for optuna_epochs epochs with
the trial's values (learning_rate, optimizer, batch_size, weight_decay, scheduler and its
parameters, layer-wise rates, any other config key in search_space), reports the metric after
every epoch so the pruner can stop it early, and the study keeps the best.

The config's optuna dict (the original pochitrain's format):
  optuna = {"study_name": "digits", "n_trials": 20, "n_jobs": 1, "optuna_epochs": 5,
            "sampler": "TPESampler(seed=0)", "pruner": "MedianPruner(n_startup_trials=3)",
            "storage": None,
            "search_space": {
                "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                "optimizer": {"type": "categorical", "choices": ["SGD", "Adam", "AdamW"]},
                "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
                "scheduler_gamma": {"type": "float", "low": 0.1, "high": 0.9}}}
Direction follows the metric: val_accuracy is maximized, val_loss minimized.

Writes into --output (default work_dirs/optuna_results, or optuna_results_NNN if it exists):
  best_params.json, trials_history.json, study_statistics.json (with importances),
  optimized_config.py (your config + the best values: 'pochi train -c' it as is),
  optimization_history / param_importances / contour .html and .png, trials/ (one run each),
  study.db (the SQLite study, unless --storage names another database).
Several processes (on one or many machines) with the same --storage and study name share
one study: run 'pochi optimize' again with the same --output or --storage to add trials.
Ctrl+C stops after the running trial (a trial it cut short is FAIL "interrupted (Ctrl+C)"),
writes the files from the finished trials and exits 130; a second Ctrl+C stops at once.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    add_config(parser, "training config with an optuna dict (default: "
               "configs/pochi_train_config.py)", default="configs/pochi_train_config.py")
    parser.add_argument("--output", "-o", default=None, metavar="DIR",
                        help="folder for the study's files (default: work_dirs/optuna_results, "
                        "or the next free optuna_results_NNN); an existing folder joins its "
                        "study")
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="Optuna RDB storage: sqlite:///path.db, postgresql://user:pass@"
                        "host/db, mysql+pymysql://... (default: optuna['storage'], else "
                        "sqlite:///<output>/study.db)")
    parser.add_argument("--study-name", default=None, metavar="NAME",
                        help="study name (default: optuna['study_name'])")
    parser.add_argument("--n-trials", type=positive_int, default=None, metavar="N",
                        help="trials this process runs (default: optuna['n_trials'])")
    parser.add_argument("--n-jobs", type=positive_int, default=None, metavar="N",
                        help="trials run in parallel threads in this process (default: "
                        "optuna['n_jobs'])")
    parser.add_argument("--metric", choices=("val_accuracy", "val_loss"), default=None,
                        help="what a trial optimizes (default: optuna['metric'], else "
                        "val_loss when optuna['direction'] is 'minimize', else val_accuracy)")


def run(args: argparse.Namespace) -> int:
    from pochitrain.console import info, warn
    from pochitrain.optimize.run import optimize

    result = optimize(args.config, output=args.output, storage=args.storage,
                      n_trials=args.n_trials, n_jobs=args.n_jobs, metric=args.metric,
                      study_name=args.study_name)
    best = (f"{result.best_value:.4g} with {result.best_params}"
            if result.best_value is not None else "none (no trial completed)")
    info(f"[bold]best {result.metric}[/bold] {best} "
         f"({result.n_trials} trials in study {result.study_name!r})")
    for name, why in result.skipped_charts.items():
        info(f"  chart {name} left out: {why}")
    for path in result.files:
        info(f"  {path}")
    info(f"[green]結果 / Results:[/green] {result.out_dir}")
    if result.interrupted:
        warn("中断しました / Interrupted: the study stopped after the running trial; the files "
             "above are from the finished trials. Run the same command to add trials.")
        return 130
    return 0

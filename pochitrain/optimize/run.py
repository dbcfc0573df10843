"""``pochi optimize``: an Optuna study over the config's ``optuna['search_space']``.

Each trial is a real training run (``training.run``, as ``pochi train``) of ``optuna_epochs``
epochs with the suggested values as config overrides; it reports the metric after every
validated epoch so the pruner can stop it, and its value is the best over its epochs. A trial
whose training fails with a pochitrain error (NaN loss, out of memory, ...) is marked FAIL and
the study goes on.

Ctrl+C, as in ``pochi train``: the first one stops the study after the running trial. A trial
whose training it reached stops after the current batch (``training.stop_on_ctrl_c``) and is
marked FAIL with the cause "interrupted (Ctrl+C)" (unless every epoch had run: then it
completes), so its partial value never competes with full ones; a trial it did not reach
runs to its end. The study's files are then written from the finished trials and the result
says ``interrupted``. A second Ctrl+C stops at once: the running trial is marked FAIL with the
same cause and no file is written (the storage keeps every finished trial).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pochitrain.console import info, warn
from pochitrain.errors import BackendMissingError, ConfigError, PochiError, TrainingError
from pochitrain.workspace import make_folder

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial, Trial

    from pochitrain.config import Settings
    from pochitrain.optimize.space import Param


DEFAULT_OUTPUT = Path("work_dirs") / "optuna_results"
INTERRUPTED = "interrupted (Ctrl+C)"


class TrialInterrupted(PochiError):
    """Ctrl+C stopped a trial's training before its last epoch (recorded as FAIL)."""


@dataclass
class OptimizeResult:
    out_dir: Path
    study_name: str
    metric: str
    direction: str
    best_value: float | None
    best_params: dict[str, Any]
    n_trials: int  # in the whole study (other processes' trials included)
    storage: str
    files: list[Path] = field(default_factory=list)
    skipped_charts: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False  # Ctrl+C stopped the study after the running trial


class Objective:
    """One trial = one short training run with the trial's values as config overrides."""

    def __init__(self, config: Path, params: list[Param], settings: Settings, epochs: int,
                 metric: str, maximize: bool, trials_dir: Path, stop: threading.Event) -> None:
        self.config, self.params, self.settings = config, params, settings
        self.epochs, self.metric, self.maximize = epochs, metric, maximize
        self.trials_dir = trials_dir
        self.stop = stop  # set by Ctrl+C: no trial after the running one

    def __call__(self, trial: Trial) -> float:
        import optuna

        from pochitrain.optimize.space import overrides_for
        from pochitrain.training.run import run_training

        values = {p.name: p.suggest(trial) for p in self.params}
        overrides = overrides_for(self.params, values, self.settings, self.epochs)
        trial.set_user_attr("overrides", overrides)
        best: float | None = None

        def on_epoch(epoch: int, metrics: dict[str, Any]) -> None:
            nonlocal best
            value = float(metrics[self.metric])
            if best is None or (value > best if self.maximize else value < best):
                best = value
            trial.report(value, epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned_at_epoch", epoch)
                raise optuna.TrialPruned(f"pruned after epoch {epoch} ({self.metric} {value:.4g})")

        try:
            result = run_training(self.config, overrides=overrides,
                                  work_dir=self.trials_dir, progress=False, on_epoch=on_epoch)
        except PochiError as exc:
            trial.set_user_attr("error", exc.message)
            raise
        except KeyboardInterrupt:  # a second Ctrl+C: the study stops at once
            trial.set_user_attr("error", INTERRUPTED)
            raise
        trial.set_user_attr("run_dir", str(result.run_dir))
        if result.interrupted:  # the first Ctrl+C reached the training
            self.stop.set()
            if best is None or result.epochs_run < self.epochs:
                why = f"{INTERRUPTED} after {result.epochs_run} of {self.epochs} epoch(s)"
                trial.set_user_attr("error", why)
                raise TrialInterrupted(f"試行を中断しました\nTrial {trial.number} {why}.")
        if best is None:
            raise TrainingError("試行で検証したエポックがありません\n"
                                f"Trial {trial.number} validated no epoch.",
                                "Check the validation data.")
        return best


def optimize(config: Path | str, *, output: Path | str | None = None,
             storage: str | None = None, n_trials: int | None = None,
             n_jobs: int | None = None, metric: str | None = None,
             study_name: str | None = None) -> OptimizeResult:
    """Run (or join) a study; write its files; see the module docstring."""
    try:
        import optuna
    except ImportError as exc:
        raise BackendMissingError("pochi optimize には Optuna が必要です\n"
                                  "pochi optimize needs Optuna, which is not installed.",
                                  "pip install 'pochitrain[optimize]' (optuna, plotly).") from exc
    from pochitrain.config import load_config
    from pochitrain.optimize import study as S
    from pochitrain.optimize.space import check_space, parse_space, warn_unused_learning_rate

    config = Path(config)
    settings = load_config(config)
    config = Path(settings.config_path or config)
    cfg = getattr(settings, "optuna", None)
    if not cfg:
        raise ConfigError("config に optuna の設定がありません\n"
                          f"{config} has no optuna dict.",
                          "Add optuna = {'n_trials': 20, 'optuna_epochs': 5, 'search_space': "
                          "{'learning_rate': {'type': 'float', 'low': 1e-4, 'high': 1e-2, "
                          "'log': True}}} (see docs/readme_optimize.md).")
    params = parse_space(cfg.get("search_space"))
    metric, direction = S.metric_and_direction(cfg, metric)
    epochs = int(cfg.get("optuna_epochs") or 10)
    check_space(config, params, settings, epochs)
    warn_unused_learning_rate(params, settings)
    sampler = S.build_sampler(cfg, S.grid_of(params))
    pruner = S.build_pruner(cfg)
    out_dir = _output_dir(output)
    url = S.storage_url(storage, cfg, out_dir)
    name = study_name or str(cfg.get("study_name") or "pochitrain_optimization")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=S.open_storage(url), sampler=sampler, pruner=pruner,
                                study_name=name, direction=direction,  # type: ignore[arg-type]
                                load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError("スタディの向きが指標と合いません\n"
                          f"The study {name!r} in {S.masked(url)} is "
                          f"{study.direction.name.lower()}d; {metric} needs {direction}.",
                          "Use another --study-name, or the metric the study was made for.")
    info(f"study {name!r}: {metric} ({direction}), {len(params)} parameters, storage "
         f"{S.masked(url)}, trials in {out_dir / 'trials'}")
    objective = Objective(config, params, settings, epochs, metric, direction == "maximize",
                          out_dir / "trials", threading.Event())
    interrupted = _run_trials(study, objective, int(n_trials or cfg.get("n_trials") or 20),
                              int(n_jobs or cfg.get("n_jobs") or 1), S.masked(url))
    if interrupted:
        warn("Ctrl+C: writing the study's files from the finished trials")
    return _finish(study, out_dir, config, settings, metric, direction, url, interrupted)


def _run_trials(study: Study, objective: Objective, n_trials: int, n_jobs: int,
                where: str) -> bool:
    """Run the trials; True when Ctrl+C stopped the study after the running trial (a second
    Ctrl+C raises KeyboardInterrupt)."""
    from pochitrain.training import stop_on_ctrl_c

    def after_trial(study: Study, trial: FrozenTrial) -> None:
        _say(trial)
        if ctrl_c.is_set():  # no trial after the running one
            study.stop()

    with stop_on_ctrl_c(lambda: warn("Ctrl+C: stopping after the running trial "
                                     "(press again to stop at once)")) as ctrl_c, \
            _quiet_failed_trials():
        objective.stop = ctrl_c
        try:
            study.optimize(objective, n_trials=n_trials, n_jobs=n_jobs, catch=(PochiError,),
                           callbacks=[after_trial], gc_after_trial=_gpu_present())
        except KeyboardInterrupt:
            warn(f"Ctrl+C: stopped at once; the finished trials are in {where} (the "
                 "study's files were not written)")
            raise
    return ctrl_c.is_set()


def _gpu_present() -> bool:
    """Whether to collect garbage after each trial: a reference cycle left by a trial can hold
    GPU memory that the next trial needs, and Python's collector does not see that memory. On
    the CPU, Python frees such memory on its own; a forced full collection there only costs
    time."""
    import torch

    return torch.cuda.is_available()


def _finish(study: Study, out_dir: Path, config: Path, settings: Settings, metric: str,
            direction: str, url: str, interrupted: bool = False) -> OptimizeResult:
    from pochitrain.optimize import outputs
    from pochitrain.optimize.study import masked

    files, best, stats = outputs.write_outputs(study, out_dir, config=config,
                                               settings=settings, metric=metric,
                                               storage=masked(url))
    chart_files, skipped = outputs.write_charts(study, out_dir, stats["param_importances"])
    if best["best_value"] is None and not interrupted:
        raise TrainingError("完了した試行がありません\n"
                            f"No trial of study {study.study_name!r} completed "
                            f"({stats['n_pruned']} pruned, {stats['n_failed']} failed); "
                            f"see {out_dir / 'trials_history.json'}.",
                            "Widen the search space, loosen the pruner or raise optuna_epochs.")
    return OptimizeResult(out_dir, study.study_name, metric, direction, best["best_value"],
                          best["best_params"], best["n_trials"], masked(url),
                          files + chart_files, skipped, interrupted)


@contextlib.contextmanager
def _quiet_failed_trials() -> Iterator[None]:
    """Optuna logs every failed trial with its traceback; ``_say`` names the cause already,
    and an error that is not a pochitrain one reaches the caller with its own traceback."""
    def keep(record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith("Trial ") and " failed with" in text)

    logger = logging.getLogger("optuna.study._optimize")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _say(trial: FrozenTrial) -> None:
    state = trial.state.name.lower()
    value = f"{trial.value:.4g}" if trial.value is not None else "-"
    extra = (f" at epoch {trial.user_attrs['pruned_at_epoch']}"
             if "pruned_at_epoch" in trial.user_attrs else "")
    line = f"trial {trial.number}: {state}{extra}, value {value}, params {trial.params}"
    if state == "fail":
        warn(line + f" ({trial.user_attrs.get('error', 'see the log')})")
    else:
        info(line)


def _output_dir(output: Path | str | None) -> Path:
    """``--output`` as is (an existing folder joins its study); else work_dirs/optuna_results,
    or the next free optuna_results_NNN when that exists (the original's rule)."""
    if output is not None:
        return make_folder(Path(output), "Choose a writable --output folder.")
    out = DEFAULT_OUTPUT
    n = 0
    while True:
        try:
            out.mkdir(parents=True)
            return out
        except FileExistsError:
            n += 1
            out = DEFAULT_OUTPUT.with_name(f"{DEFAULT_OUTPUT.name}_{n:03d}")

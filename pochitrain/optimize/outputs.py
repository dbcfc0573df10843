"""The files of a study, as the original writes them, plus what it left out (their keys:
docs/readme_optimize.md).

Values are in the original's unit: with ``val_accuracy`` (its objective) they are percent,
as its trials returned them; the fraction the study stores is written beside them.
``optimized_config.py`` is the config file verbatim with the best trial's values assigned at
its end (later assignments win) and the data/work paths made absolute.

Charts, drawn by Optuna: optimization history, parameter importances and the contour of the
two most important parameters, each as Plotly HTML and as a matplotlib PNG
(``optuna.visualization.matplotlib``: no kaleido / browser needed). A chart that cannot be
drawn (too few trials, ...) is left out, with the reason.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pochitrain.workspace import atomic_file, atomic_write_text, local_now

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial

    from pochitrain.config import Settings

PATH_KEYS = ("train_data_root", "val_data_root", "work_dir")


def _json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def _write(path: Path, data: Any) -> Path:
    atomic_write_text(path, json.dumps(_json(data), indent=2, ensure_ascii=False) + "\n")
    return path


def in_original_unit(value: float | None, metric: str) -> float | None:
    """Accuracy as the original's percent (rounded so 0.58 gives 58.0); a loss as it is."""
    if value is None or metric != "val_accuracy":
        return value
    return round(100.0 * float(value), 10)


def value_unit(metric: str) -> str:
    return "percent" if metric == "val_accuracy" else "loss"


def trial_record(t: FrozenTrial, metric: str = "val_accuracy") -> dict[str, Any]:
    return {
        "number": t.number,
        "value": in_original_unit(t.value, metric),
        "params": dict(t.params),
        "state": t.state.name,
        "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
        "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
        "value_fraction": t.value if metric == "val_accuracy" else None,
        "intermediate_values": {str(k): in_original_unit(v, metric)
                                for k, v in sorted(t.intermediate_values.items())},
        "overrides": t.user_attrs.get("overrides"),
        "run_dir": t.user_attrs.get("run_dir"),
        "pruned_at_epoch": t.user_attrs.get("pruned_at_epoch"),
        "error": t.user_attrs.get("error"),
    }


def importances(study: Study) -> dict[str, float] | None:
    import optuna
    from optuna.trial import TrialState

    names = {k for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             for k in t.params}
    if len(names) == 1:  # one parameter explains everything; no fANOVA (and sklearn) needed
        return {names.pop(): 1.0}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except Exception:  # noqa: BLE001 - too few / identical trials, one parameter, ...
        return None


class StudyFiles(NamedTuple):
    files: list[Path]
    best: dict[str, Any]  # best_params.json's content
    stats: dict[str, Any]  # study_statistics.json's content


def write_outputs(study: Study, out_dir: Path, *, config: Path, settings: Settings, metric: str,
                  storage: str) -> StudyFiles:
    """Write the JSON files and optimized_config.py; return them with what they say."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = study.best_trial if done else None
    now = local_now().isoformat(timespec="seconds")
    best_value = best.value if best else None
    best_info = {
        "study_name": study.study_name,
        "best_value": in_original_unit(best_value, metric),
        "best_params": dict(best.params) if best else {},
        "n_trials": len(trials),
        "timestamp": now,
        "best_value_fraction": best_value if metric == "val_accuracy" else None,
        "value_unit": value_unit(metric),
        "metric": metric,
        "direction": study.direction.name.lower(),
        "best_trial": best.number if best else None,
        "overrides": best.user_attrs.get("overrides") if best else None,
        "storage": storage,
    }
    files = [_write(out_dir / "best_params.json", best_info),
             _write(out_dir / "trials_history.json",
                    [trial_record(t, metric) for t in trials])]
    stats = study_statistics(study, trials, done, metric, now)
    files.append(_write(out_dir / "study_statistics.json", stats))
    if best is not None:
        files.append(write_optimized_config(out_dir / "optimized_config.py", config, settings,
                                            best, study.study_name, metric))
    return StudyFiles(files, _json(best_info), _json(stats))


def study_statistics(study: Study, trials: list[FrozenTrial], done: list[FrozenTrial],
                     metric: str, now: str) -> dict[str, Any]:
    """The original's layout (``statistics`` nested, ``direction`` as Optuna names it), then
    the same flat with our key names."""
    from optuna.trial import TrialState

    values = [in_original_unit(float(t.value), metric) or 0.0
              for t in done if t.value is not None]
    maximize = study.direction.name.lower() == "maximize"
    best = (max(values) if maximize else min(values)) if values else None
    worst = (min(values) if maximize else max(values)) if values else None
    mean = statistics.fmean(values) if values else None
    std = statistics.pstdev(values) if len(values) > 1 else (0.0 if values else None)
    counts = {"n_completed": len(done),
              "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
              "n_failed": sum(t.state == TrialState.FAIL for t in trials)}
    found = importances(study) if len(done) >= 2 else None
    return {
        "study_name": study.study_name,
        "direction": study.direction.name,
        "statistics": {"best": best, "worst": worst, "mean": mean, "std": std, **counts},
        "param_importances": found,
        "timestamp": now,
        "metric": metric,
        "value_unit": value_unit(metric),
        "best_value": best,
        "worst_value": worst,
        "mean_value": mean,
        "std_value": std,
        "n_trials": len(trials),
        **counts,
    }


def write_optimized_config(path: Path, config: Path, settings: Settings, best: FrozenTrial,
                           study_name: str, metric: str) -> Path:
    overrides = dict(best.user_attrs.get("overrides") or {})
    overrides.pop("epochs", None)  # the trial's optuna_epochs; full training keeps the config's
    lines = ["", "", "# " + "-" * 86,
             (f"# pochi optimize: best trial {best.number} of study {study_name!r} "
             f"({metric} = {best.value:.6g}), {local_now().isoformat(timespec='seconds')}."),
             f"# Original config: {config}",
             ("# Its values below replace the ones above; the paths are absolute so this copy "
             "trains from any folder.")]
    for key in PATH_KEYS:
        value = getattr(settings, key, None)
        if value is not None:
            lines.append(f"{key} = {str(value)!r}")
    for key, value in overrides.items():
        lines.append(f"{key} = {value!r}")
    text = Path(config).read_text(encoding="utf-8").rstrip("\n") + "\n".join(lines) + "\n"
    atomic_write_text(path, text)
    return path


class Charts(NamedTuple):
    files: list[Path]
    skipped: dict[str, str]  # chart or file name -> why it was not drawn


def write_charts(study: Study, out_dir: Path, importances: dict[str, float] | None) -> Charts:
    from optuna.trial import TrialState

    files: list[Path] = []
    skipped: dict[str, str] = {}
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    names = list(importances or {}) or sorted({k for t in done for k in t.params})
    pair = names[:2]
    for name, plot, kwargs, why_not in (
        ("optimization_history", "plot_optimization_history", {},
         None if done else "no completed trial"),
        ("param_importances", "plot_param_importances", {},
         None if importances and len(importances) > 1
         else "importances need 2+ parameters and 2+ completed trials"),
        ("contour", "plot_contour", {"params": pair},
         None if len(pair) == 2 and len(done) >= 2 else "needs 2+ parameters and 2+ trials"),
    ):
        if why_not:
            skipped[name] = why_not
            continue
        for path, write in ((out_dir / f"{name}.html", _write_html),
                            (out_dir / f"{name}.png", _write_png)):
            try:
                write(path, plot, study, kwargs)
                files.append(path)
            except Exception as exc:  # noqa: BLE001 - a chart must not lose the study's results
                skipped[path.name] = f"{type(exc).__name__}: {exc}"
    return Charts(files, skipped)


@contextlib.contextmanager
def _no_experimental_warning() -> Iterator[None]:
    """Optuna marks its matplotlib charts experimental; users need not see that warning on
    every study."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def _write_html(path: Path, plot: str, study: Study, kwargs: dict[str, Any]) -> None:
    import optuna.visualization

    with _no_experimental_warning():
        figure = getattr(optuna.visualization, plot)(study, **kwargs)
    figure.write_html(str(path), include_plotlyjs="directory")


def _write_png(path: Path, plot: str, study: Study, kwargs: dict[str, Any]) -> None:
    """The same chart from ``optuna.visualization.matplotlib`` (no kaleido / browser)."""
    from pochitrain.plotting import use_cjk_font

    use_cjk_font()  # the Agg backend before pyplot is imported
    import matplotlib
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib

    # Optuna switches the global style to ggplot; rc_context gives the old one back
    with matplotlib.rc_context(), _no_experimental_warning():
        axes = getattr(optuna.visualization.matplotlib, plot)(study, **kwargs)
        fig = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        try:
            with atomic_file(path) as tmp:
                fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        finally:
            plt.close(fig)

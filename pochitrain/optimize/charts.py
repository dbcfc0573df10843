"""Study charts: Optuna's Plotly figures as HTML, and the same three as PNG with matplotlib
(no kaleido / browser needed).

  optimization_history.html/.png   value per trial, best so far; pruned trials marked
  param_importances.html/.png      parameter importances (needs 2+ completed trials)
  contour.html/.png                the two most important parameters (needs 2+ parameters)

A chart that cannot be drawn (too few trials, ...) is left out; ``write_charts`` returns the
reasons so the caller can say why.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pochitrain.workspace import atomic_write_bytes


def write_charts(study: Any, out_dir: Path,
                 importances: dict[str, float] | None) -> tuple[list[Path], dict[str, str]]:
    files: list[Path] = []
    skipped: dict[str, str] = {}
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    names = list(importances or {}) or sorted({k for t in done for k in t.params})
    pair = names[:2]
    for name, html_fn, png_fn, why_not in (
        ("optimization_history", _history_html, _history_png,
         None if done else "no completed trial"),
        ("param_importances", _importance_html, _importance_png,
         None if importances and len(importances) > 1
         else "importances need 2+ parameters and 2+ completed trials"),
        ("contour", _contour_html, _contour_png,
         None if len(pair) == 2 and len(done) >= 2 else "needs 2+ parameters and 2+ trials"),
    ):
        if why_not:
            skipped[name] = why_not
            continue
        try:
            fig = html_fn(study, pair)
            html = out_dir / f"{name}.html"
            fig.write_html(str(html), include_plotlyjs="directory")
            files.append(html)
        except Exception as exc:  # noqa: BLE001 - a chart must not lose the study's results
            skipped[f"{name}.html"] = f"{type(exc).__name__}: {exc}"
        try:
            png = out_dir / f"{name}.png"
            atomic_write_bytes(png, png_fn(study, trials, importances, pair))
            files.append(png)
        except Exception as exc:  # noqa: BLE001
            skipped[f"{name}.png"] = f"{type(exc).__name__}: {exc}"
    return files, skipped


def _history_html(study: Any, pair: list[str]) -> Any:
    import optuna

    return optuna.visualization.plot_optimization_history(study)


def _importance_html(study: Any, pair: list[str]) -> Any:
    import optuna

    return optuna.visualization.plot_param_importances(study)


def _contour_html(study: Any, pair: list[str]) -> Any:
    import optuna

    return optuna.visualization.plot_contour(study, params=pair)


def _figure(size: tuple[float, float]) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _history_png(study: Any, trials: list[Any], imp: Any, pair: list[str]) -> bytes:
    from optuna.trial import TrialState

    maximize = study.direction.name.lower() == "maximize"
    fig, ax = _figure((7, 4))
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    ax.scatter([t.number for t in done], [t.value for t in done], label="completed", zorder=3)
    best, xs, ys = None, [], []
    for t in done:
        if best is None or (t.value > best if maximize else t.value < best):
            best = t.value
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if pruned:
        ax.scatter([t.number for t in pruned],
                   [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                   marker="x", color="gray", label="pruned (last report)")
    ax.set_xlabel("trial")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("objective value")
    ax.set_title(f"Optimization history ({study.direction.name.lower()})")
    ax.legend(fontsize=8)
    return _png(fig)


def _importance_png(study: Any, trials: list[Any], imp: Any,
                    pair: list[str]) -> bytes:
    names = list(imp)[::-1]
    fig, ax = _figure((7, 1.2 + 0.4 * len(names)))
    ax.barh(names, [imp[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance")
    ax.set_title("Hyperparameter importances")
    return _png(fig)


def _contour_png(study: Any, trials: list[Any], imp: Any, pair: list[str]) -> bytes:
    from optuna.trial import TrialState

    x_name, y_name = pair
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
            and x_name in t.params and y_name in t.params]
    fig, ax = _figure((6, 5))
    xs, x_labels = _axis([t.params[x_name] for t in done])
    ys, y_labels = _axis([t.params[y_name] for t in done])
    zs = [float(t.value) for t in done]
    cs = None
    if len(set(zip(xs, ys))) >= 3:
        try:
            cs = ax.tricontourf(xs, ys, zs, levels=12, cmap="viridis", alpha=0.6)
            fig.colorbar(cs, ax=ax, label="objective value")
        except (ValueError, RuntimeError):  # collinear points: the scatter alone
            cs = None
    points = ax.scatter(xs, ys, c=zs, cmap="viridis", edgecolors="black", zorder=3)
    if cs is None:
        fig.colorbar(points, ax=ax, label="objective value")
    for axis, labels in ((ax.xaxis, x_labels), (ax.yaxis, y_labels)):
        if labels:
            axis.set_ticks(range(len(labels)), labels)
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.set_title("Contour of the two most important parameters")
    return _png(fig)


def _axis(values: list[Any]) -> tuple[list[float], list[str] | None]:
    """Numbers stay numbers; categories become 0..n-1 with their labels."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    labels = sorted({str(v) for v in values})
    return [float(labels.index(str(v))) for v in values], labels

"""Study charts, drawn by Optuna: its Plotly figures as HTML, and the same three from
``optuna.visualization.matplotlib`` as PNG (no kaleido / browser needed).

  optimization_history.html/.png   value per trial, best so far
  param_importances.html/.png      parameter importances (needs 2+ completed trials)
  contour.html/.png                the two most important parameters (needs 2+ parameters)

A chart that cannot be drawn (too few trials, ...) is left out; ``write_charts`` returns the
reasons so the caller can say why.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pochitrain.workspace import atomic_write_bytes

if TYPE_CHECKING:
    from optuna import Study



class Charts(NamedTuple):
    files: list[Path]
    skipped: dict[str, str]  # chart or file name -> why it was not drawn


def write_charts(study: Study, out_dir: Path, importances: dict[str, float] | None) -> Charts:
    files: list[Path] = []
    skipped: dict[str, str] = {}
    from optuna.trial import TrialState

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
        try:
            html = out_dir / f"{name}.html"
            _plotly(plot, study, kwargs).write_html(str(html), include_plotlyjs="directory")
            files.append(html)
        except Exception as exc:  # noqa: BLE001 - a chart must not lose the study's results
            skipped[f"{name}.html"] = f"{type(exc).__name__}: {exc}"
        try:
            png = out_dir / f"{name}.png"
            atomic_write_bytes(png, _matplotlib_png(plot, study, kwargs))
            files.append(png)
        except Exception as exc:  # noqa: BLE001
            skipped[f"{name}.png"] = f"{type(exc).__name__}: {exc}"
    return Charts(files, skipped)


@contextlib.contextmanager
def _no_experimental_warning() -> Iterator[None]:
    """Optuna marks its matplotlib charts experimental; users need not see that warning on
    every study."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def _plotly(plot: str, study: Study, kwargs: dict[str, Any]) -> Any:
    import optuna.visualization

    with _no_experimental_warning():
        return getattr(optuna.visualization, plot)(study, **kwargs)


def _matplotlib_png(plot: str, study: Study, kwargs: dict[str, Any]) -> bytes:
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
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
            return buf.getvalue()
        finally:
            plt.close(fig)

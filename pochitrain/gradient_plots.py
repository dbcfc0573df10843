"""``vis-grad CSV``: the original pochitrain's gradient-trace plots, from a gradient CSV.

The CSV is the one gradient tracking writes (``epoch`` then one column per layer or block).
Ten PNGs (150 dpi) named ``<csv stem>_<kind>.png``: ``timeline_all`` (+ ``timeline_early`` /
``timeline_late`` with more than 3 layers; a red line at 1e-3 in the early one marks
vanishing gradients), ``heatmap``, ``statistics_initial_vs_final``, ``statistics_stability``
(std over epochs; red bars above twice the median std), ``statistics_max``,
``statistics_min``, ``snapshots`` and ``snapshots_linear`` (up to 6 evenly spaced epochs).
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pochitrain.errors import DataError, UsageError

VANISHING = 1e-3
# From this many layers the figures are drawn by worker processes, one per core: such a figure
# takes about a second (Agg's text, the PNG encoding), about what a worker takes to start.
PARALLEL_LAYERS = 30
# column names of other CSVs that start with "epoch" (training metrics): never a layer's
NOT_A_LAYER = re.compile(r"(?:^|_)(?:loss|acc|accuracy|lr|learning_rate|time|precision|recall"
                         r"|f1)(?:_|$)", re.IGNORECASE)


@dataclass
class GradientTrace:
    path: Path
    epochs: np.ndarray  # (E,)
    layers: list[str]
    values: np.ndarray  # (E, L)


def read_trace(path: Path | str) -> GradientTrace:
    """The CSV as arrays; DataError naming the file and line for anything unusable."""
    path = Path(path)
    remedy = ("Pass the gradient_trace.csv that 'pochi train' writes with "
              "enable_gradient_tracking = True (columns: epoch, then one per layer).")
    if path.is_dir():
        found = sorted(path.glob("gradient_trace*.csv")) + sorted(
            path.glob("visualization/gradient_trace*.csv"))
        raise DataError("勾配 CSV ではなくフォルダが指定されました\n"
                        f"{path} is a folder, not a gradient CSV.",
                        f"Pass the CSV itself, e.g. vis-grad {found[0]}" if found else remedy)
    if not path.is_file():
        raise DataError("勾配 CSV が見つかりません\n"
                        f"Gradient CSV not found: {path}", remedy)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: saved by Excel
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError("勾配 CSV を読み込めません\n"
                        f"Cannot read the gradient CSV {path}: {exc}", remedy) from None
    if not rows or not rows[0] or rows[0][0].strip() != "epoch" or len(rows[0]) < 2:
        raise DataError("勾配トレースの CSV ではありません\n"
                        f"{path} is not a gradient trace CSV: its first line must be "
                        "'epoch,<layer>,...'.", remedy)
    header = [h.strip() for h in rows[0]]
    _check_layer_columns(path, header, remedy)
    data = [r for r in rows[1:] if any(c.strip() for c in r)]
    if not data:
        raise DataError("勾配 CSV にエポックの行がありません\n"
                        f"The gradient CSV {path} has no epochs (only the header).", remedy)
    values = []
    for line_no, row in enumerate(data, start=2):
        if len(row) != len(header):
            raise DataError("勾配 CSV の列数がヘッダーと一致しません\n"
                            f"{path}, line {line_no}: {len(row)} values, the header has "
                            f"{len(header)} columns.", remedy)
        try:
            values.append([float(v) for v in row])
        except ValueError:
            raise DataError("勾配 CSV に数値でない値があります\n"
                            f"{path}, line {line_no}: not a number in {row!r}.", remedy) from None
    array = np.asarray(values, dtype=np.float64)
    array[:, 1:][np.isinf(array[:, 1:])] = np.nan  # a diverged run: no value to plot
    for line_no, row in enumerate(array, start=2):
        if not np.isfinite(row[0]) or np.any(row[1:] < 0):
            raise DataError("勾配トレースの CSV ではありません\n"
                            f"{path}, line {line_no} is not a gradient trace row: the epoch "
                            "must be a number and gradient norms are never negative.", remedy)
    return GradientTrace(path, array[:, 0], header[1:], array[:, 1:])


def _check_layer_columns(path: Path, header: list[str], remedy: str) -> None:
    """Columns of another CSV that starts with ``epoch`` (training metrics, say) are refused
    instead of being drawn as if they were layers."""
    not_layers = [h for h in header[1:] if NOT_A_LAYER.search(h)]
    if not_layers:
        raise DataError("勾配トレースの CSV ではありません\n"
                        f"{path} is not a gradient trace CSV: expected columns epoch, then "
                        "one per layer or block (conv1.weight, layer1, ...); "
                        f"{', '.join(not_layers[:4])} are not layers.", remedy)


def without_missing(trace: GradientTrace) -> GradientTrace:
    """The trace without its NaN / inf values (a diverged run), said in a warning: they are
    gaps in the lines and blank heatmap cells, and a layer with no value at all is dropped."""
    from pochitrain.console import warn

    missing = np.isnan(trace.values)
    if not missing.any():
        return trace
    keep = ~missing.all(axis=0)
    if not keep.any():
        raise DataError("勾配 CSV に有限の値がありません\n"
                        f"{trace.path} has no finite gradient norm (every value is NaN or "
                        "inf): the training diverged.",
                        "Fix the training (a lower learning_rate, say) and plot the new "
                        "run's gradient_trace.csv.")
    bad = [name for name, m in zip(trace.layers, missing.any(axis=0)) if m]
    dropped = [name for name, k in zip(trace.layers, keep) if not k]
    warn(f"{trace.path.name}: {int(missing.sum())} NaN/inf values (layers "
         f"{', '.join(bad[:6])}{', ...' if len(bad) > 6 else ''}) are left out of the plots"
         + (f"; no value at all, not drawn: {', '.join(dropped)}" if dropped else ""))
    return GradientTrace(trace.path, trace.epochs,
                         [name for name, k in zip(trace.layers, keep) if k], trace.values[:, keep])


def _positive(values: np.ndarray) -> bool:
    """Every value that is there is > 0 (a log scale can show them)."""
    present = values[~np.isnan(values)]
    return bool(present.size) and bool(np.all(present > 0))


def _save(fig: Any, plt: Any, path: Path) -> None:
    from pochitrain.plotting import tight_layout
    from pochitrain.workspace import atomic_file

    with warnings.catch_warnings():  # very many layers: a crowded plot, still drawn
        warnings.simplefilter("ignore", UserWarning)
        tight_layout(fig)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    plt.close(fig)


def _timeline(plt: Any, trace: GradientTrace, idx: list[int], title: str,
              vanishing_line: bool = False) -> Any:
    fig, ax = plt.subplots(figsize=(10, 6))
    cmap = plt.get_cmap("tab20" if len(idx) > 10 else "tab10")
    for n, i in enumerate(idx):
        ax.plot(trace.epochs, np.maximum(trace.values[:, i], 1e-12), marker="o", markersize=3,
                color=cmap(n % cmap.N), label=trace.layers[i])
    if vanishing_line:
        ax.axhline(VANISHING, color="red", linestyle="--", label=f"{VANISHING:g}")
    ax.set_yscale("log")
    ax.set_xlabel("エポック / epoch")
    ax.set_ylabel("勾配ノルム / gradient norm (log)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(idx) > 8 else 1, loc="best")
    return fig


def _bars(plt: Any, names: list[str], heights: np.ndarray, title: str, ylabel: str,
          colors: list[str] | None = None, log: bool = True) -> Any:
    fig, ax = plt.subplots(figsize=(max(8, 0.4 * len(names) + 2), 6))
    ax.bar(range(len(names)), heights, color=colors or "steelblue")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    if log and _positive(heights):
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return fig


def _heatmap(plt: Any, trace: GradientTrace, how: str) -> Any:
    n = len(trace.layers)
    fig, ax = plt.subplots(figsize=(max(8, 0.3 * len(trace.epochs) + 4), max(4, 0.35 * n + 2)))
    im = ax.imshow(np.log10(np.maximum(trace.values.T, 1e-12)), aspect="auto", cmap="YlOrRd")
    fig.colorbar(im, ax=ax, label="log10(勾配ノルム / gradient norm)")
    ax.set_yticks(range(n), trace.layers, fontsize=7)
    step = max(1, len(trace.epochs) // 20)
    ax.set_xticks(range(0, len(trace.epochs), step),
                  [str(int(e)) for e in trace.epochs[::step]])
    ax.set_xlabel("エポック / epoch")
    ax.set_title(f"勾配ヒートマップ / gradient heatmap{how}")
    return fig


def _initial_vs_final(plt: Any, trace: GradientTrace) -> Any:
    n = len(trace.layers)
    fig, ax = plt.subplots(figsize=(max(8, 0.4 * n + 2), 6))
    x = np.arange(n)
    ax.bar(x - 0.2, trace.values[0], 0.4, label=f"epoch {int(trace.epochs[0])}")
    ax.bar(x + 0.2, trace.values[-1], 0.4, label=f"epoch {int(trace.epochs[-1])}")
    ax.set_xticks(x, trace.layers, rotation=60, ha="right", fontsize=8)
    if _positive(trace.values[[0, -1]]):
        ax.set_yscale("log")
    ax.set_title("初期と最終の勾配 / initial vs final gradient norm")
    ax.legend()
    return fig


def _snapshots(plt: Any, trace: GradientTrace, log: bool) -> Any:
    """The layers' norms at up to 6 evenly spaced epochs."""
    n = len(trace.layers)
    picks = sorted(set(np.linspace(0, len(trace.epochs) - 1, min(6, len(trace.epochs)))
                       .round().astype(int).tolist()))
    fig, ax = plt.subplots(figsize=(max(8, 0.4 * n + 2), 6))
    for i in picks:
        ax.plot(range(n), trace.values[i], marker="o", label=f"epoch {int(trace.epochs[i])}")
    ax.set_xticks(range(n), trace.layers, rotation=60, ha="right", fontsize=8)
    if log and _positive(trace.values[picks]):
        ax.set_yscale("log")
    ax.set_title("エポックごとの勾配分布 / gradient norm by layer at selected epochs"
                 + ("" if log else " (linear)"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _figures(trace: GradientTrace, how: str) -> list[tuple[str, Callable[[Any], Any]]]:
    """(file suffix, figure maker taking pyplot) for every plot, in the order they are
    written; each figure is drawn only when its turn comes (one open at a time)."""
    n = len(trace.layers)
    all_idx = list(range(n))
    figures: list[tuple[str, Callable[[Any], Any]]] = [
        ("timeline_all", partial(_timeline, trace=trace, idx=all_idx,
                                 title=f"勾配ノルムの推移 / gradient norm per layer{how}"))]
    if n > 3:
        half = n // 2
        figures += [
            ("timeline_early", partial(_timeline, trace=trace, idx=all_idx[:half],
                                       title="入力側の層 / early layers", vanishing_line=True)),
            ("timeline_late", partial(_timeline, trace=trace, idx=all_idx[half:],
                                      title="出力側の層 / late layers")),
        ]
    std = np.nanstd(trace.values, axis=0)
    limit = 2 * float(np.median(std))
    colors = ["red" if s > limit else "steelblue" for s in std]
    return figures + [
        ("heatmap", partial(_heatmap, trace=trace, how=how)),
        ("statistics_initial_vs_final", partial(_initial_vs_final, trace=trace)),
        ("statistics_stability", partial(_bars, names=trace.layers, heights=std,
                                         title="勾配の安定性 (標準偏差) / stability: std over "
                                         "epochs (red: > 2x median)", ylabel="std",
                                         colors=colors, log=False)),
        ("statistics_max", partial(_bars, names=trace.layers,
                                   heights=np.nanmax(trace.values, axis=0),
                                   title="最大勾配 / max gradient norm", ylabel="max")),
        ("statistics_min", partial(_bars, names=trace.layers,
                                   heights=np.nanmin(trace.values, axis=0),
                                   title="最小勾配 / min gradient norm", ylabel="min")),
        ("snapshots", partial(_snapshots, trace=trace, log=True)),
        ("snapshots_linear", partial(_snapshots, trace=trace, log=False)),
    ]


def draw_figure(trace: GradientTrace, how: str, suffix: str, path: Path) -> Path:
    """Write the plot ``suffix`` of ``trace`` to ``path`` (a worker process's job, too)."""
    from pochitrain.plotting import pyplot

    plt = pyplot()
    make = dict(_figures(trace, how))[suffix]
    _save(make(plt), plt, path)
    return path


def plot_trace(csv_path: Path | str, output_dir: Path | str | None = None,
               aggregation: str | None = None, workers: int | None = None,
               progress: bool = False) -> list[Path]:
    """Write the ten PNGs; return their paths. ``aggregation``: named in the titles.
    ``workers``: processes that draw (None: one per core for a trace of many layers, else
    none); ``progress``: a progress bar."""
    from pochitrain.console import progress_bar

    trace = without_missing(read_trace(csv_path))
    out = _output_folder(Path(output_dir) if output_dir is not None else trace.path.parent)
    how = f" ({aggregation})" if aggregation else ""
    jobs = [(suffix, out / f"{trace.path.stem}_{suffix}.png")
            for suffix, _ in _figures(trace, how)]
    if workers is None:
        workers = (os.cpu_count() or 1) if len(trace.layers) >= PARALLEL_LAYERS else 1
    with progress_bar(progress, "vis-grad", len(jobs)) as advance:
        left = jobs
        if workers > 1:
            left = _draw_in_workers(trace, how, jobs, min(workers, len(jobs)), advance)
        for suffix, path in left:
            draw_figure(trace, how, suffix, path)
            advance(1)
    return [path for _, path in jobs]


def _draw_in_workers(trace: GradientTrace, how: str, jobs: list[tuple[str, Path]],
                     workers: int, advance: Callable[[int], None]) -> list[tuple[str, Path]]:
    """Each figure in a spawned worker (no fork: safe beside threads, and as on Windows);
    returns the jobs left undone when workers cannot start or die, for the command to draw.
    Ctrl+C reaches the command alone; the figures not yet drawn are then cancelled."""
    import multiprocessing
    import signal
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    done: set[Path] = set()
    try:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=signal.signal,
                                   initargs=(signal.SIGINT, signal.SIG_IGN))
    except (OSError, NotImplementedError):  # no process can be started here
        return jobs
    try:
        futures = [pool.submit(draw_figure, trace, how, suffix, path) for suffix, path in jobs]
        for future in as_completed(futures):
            done.add(future.result())
            advance(1)
    except BrokenProcessPool:  # a worker died (out of memory, say): the rest is drawn here
        pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [job for job in jobs if job[1] not in done]


def _output_folder(out: Path) -> Path:
    """The PNGs' folder, created when missing and checked writable before anything is drawn."""
    from pochitrain.workspace import make_folder, probe_writable

    if out.exists() and not out.is_dir():
        raise UsageError("--output-dir がフォルダではなくファイルです\n"
                         f"--output-dir {out} is a file, not a folder.",
                         "Choose a folder for the PNGs (it is created when missing).")
    make_folder(out, "Choose another --output-dir DIR.", UsageError)
    probe_writable(out, "--output-dir DIR")
    return out

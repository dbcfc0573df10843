"""`vis-grad CSV` (also `pochi vis-grad`): the gradient-trace plots of a training run."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Draw the gradient-trace plots (the original pochitrain's ten PNGs) from the gradient CSV a
training run writes with enable_gradient_tracking = True.

examples:
  vis-grad work_dirs/20260101_001/gradient_trace.csv
  pochi vis-grad gradient_trace.csv --output-dir plots/
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("csv", metavar="CSV", help="gradient_trace.csv of a training run")
    parser.add_argument("--output-dir", "-o", default=None, metavar="DIR",
                        help="folder for the PNGs (default: the CSV's folder)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pochitrain.console import info
    from pochitrain.gradient_plots import plot_trace

    csv_path = Path(args.csv)
    files = plot_trace(csv_path, args.output_dir, run_aggregation(csv_path), progress=True)
    info(f"[green]{len(files)} plots[/green] -> {files[0].parent}")
    return 0


def run_aggregation(csv_path) -> str | None:  # type: ignore[no-untyped-def]
    """gradient_tracking_config['aggregation_method'] of the run, for the titles: from the
    run's run.json (no config to execute, so no torch to import), else from its config
    (``resolve.RunConfig.setting``, as every command that reads a run)."""
    from pochitrain.errors import PochiError
    from pochitrain.resolve import RunConfig

    config = RunConfig.for_model(csv_path)
    if config.path is None:
        return None
    try:
        tracking = config.setting("gradient_tracking_config")
    except PochiError:  # a config that does not load: titles without the method
        return None
    method = tracking.get("aggregation_method") if isinstance(tracking, dict) else None
    return method if isinstance(method, str) else None

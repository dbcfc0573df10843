"""`pochi bench`: run a benchmark suite (one process per run) and aggregate the results."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from pochitrain.cli.common import positive_float

if TYPE_CHECKING:
    from pathlib import Path

DESCRIPTION = """\
Run a benchmark suite from a YAML file (the original pochitrain's bench_suites.yaml format,
plus batch sizes and precisions as case axes) and aggregate the results.

Every case x pipeline x batch size x precision runs 'repeats' times, each run a separate
'pochi infer ... --benchmark-json' process. Results go to
<output-root>/<suite>_<YYYYMMDD_HHMMSS>/ (local time):
  raw/case_NNN_<name>/run_RRR/   inference results, benchmark_result.json, run.log
  summary/benchmark_summary.csv|.json|.md, benchmark_chart.png
      per case: mean and stdev of ms/image, p50/p90/p99 per-image latency, images/s,
      accuracy, peak GPU memory; failed and skipped runs with their logs.
A failed run keeps its log and is listed, and is left out of the aggregate (a result file it
wrote is kept as benchmark_result.failed.json); the others still run (unless --fail-fast).
TensorRT cases are skipped on a machine without a CUDA GPU. Exit code 1 when a run failed;
Ctrl+C stops the suite, aggregates what ran, lists the runs not run and exits 130.

  pochi bench --suite quick --suites-file configs/bench_suites.yaml
  pochi bench --aggregate-only benchmark_runs/quick_20260101_120000
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", default=None, metavar="NAME",
                        help="the suite to run (a key under 'suites:' in the suites file)")
    parser.add_argument("--suites-file", default="configs/bench_suites.yaml", metavar="FILE",
                        help="suite YAML file (default: configs/bench_suites.yaml)")
    parser.add_argument("--output-root", "-o", default="benchmark_runs", metavar="DIR",
                        help="folder for bench runs (default: benchmark_runs)")
    parser.add_argument("--aggregate-only", nargs="?", const=True, default=None,
                        metavar="DIR", help="only aggregate the benchmark_result.json files "
                        "under DIR (a bench run, or any folder) into DIR/summary")
    parser.add_argument("--input-dir", default=None, metavar="DIR",
                        help="the folder for --aggregate-only (the original's spelling)")
    parser.add_argument("--fail-fast", action="store_true",
                        help="stop at the first failed run (what ran is still aggregated)")
    parser.add_argument("--timeout", type=positive_float, default=None, metavar="SECONDS",
                        help="a run taking longer fails (default: no limit)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the cases and their commands, run nothing")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pochitrain.console import info, warn
    from pochitrain.errors import UsageError

    if args.aggregate_only is not None:
        folder = args.aggregate_only if isinstance(args.aggregate_only, str) else args.input_dir
        if not folder:
            raise UsageError("--aggregate-only にはフォルダを指定してください\n"
                             "--aggregate-only needs a folder.",
                             "Use --aggregate-only DIR (or --aggregate-only --input-dir DIR).")
        src = _results_folder(Path(folder))
        return _aggregate(src, _previous_runs(src))
    if not args.suite:
        raise UsageError("スイートを指定してください\n"
                         "No suite given.", "Use --suite NAME, or --aggregate-only DIR.")

    import dataclasses
    import json

    from pochitrain.bench.runner import INTERRUPTED, command, new_bench_dir, run_suite
    from pochitrain.bench.suite import load_suite
    from pochitrain.workspace import atomic_write_text

    suite = load_suite(args.suites_file, args.suite)
    if args.dry_run:
        for case in suite.cases:
            info(f"{case.name} x{case.repeats}: " + " ".join(command(case, Path("OUT"))))
        return 0
    bench_dir = new_bench_dir(Path(args.output_root), suite.name)
    info(f"suite {suite.name}: {len(suite.cases)} cases -> {bench_dir}")
    records = run_suite(suite, bench_dir, fail_fast=args.fail_fast, timeout=args.timeout,
                        say=info)
    runs = [dataclasses.asdict(r) for r in records]
    atomic_write_text(bench_dir / "runs.json", json.dumps(runs, indent=2) + "\n")
    _aggregate(bench_dir, runs)
    not_run = [r for r in records if r.reason.endswith(INTERRUPTED)]
    if not_run:
        warn(f"中断しました / Interrupted: {len(not_run)} run(s) cut or not run (listed above); "
             f"what ran is aggregated in {bench_dir / 'summary'}.")
        return 130
    return 1 if any(r.status == "failed" for r in records) else 0


def _results_folder(src: Path) -> Path:
    """The --aggregate-only folder: it exists, is a folder and holds result files."""
    from pochitrain.bench.report import result_files
    from pochitrain.errors import DataError, UsageError

    if src.is_file():
        raise UsageError("--aggregate-only にはファイルではなくフォルダを指定してください\n"
                         f"--aggregate-only: {src} is a file, not a folder.",
                         "Pass the bench run folder (benchmark_runs/<suite>_<time>) or a "
                         "folder holding benchmark_result.json files.")
    if not src.is_dir():
        raise UsageError("--aggregate-only のフォルダが見つかりません\n"
                         f"--aggregate-only: folder not found: {src}",
                         "Pass a bench run folder (benchmark_runs/<suite>_<time>).")
    if not result_files(src):
        raise DataError("集計する結果がありません\n"
                        f"No benchmark results found: no benchmark_result.json under {src}.",
                        "Pass a bench run folder, or a folder holding the "
                        "benchmark_result.json files of 'pochi infer --benchmark-json'.")
    return src


def _previous_runs(folder: Path) -> list[dict[str, Any]]:
    import json

    path = folder / "runs.json"
    try:
        return list(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return []


def _aggregate(folder: Path, runs: list[dict[str, Any]]) -> int:
    from pochitrain.bench.report import write_summary
    from pochitrain.console import info, warn

    source = folder / "raw" if (folder / "raw").is_dir() else folder
    summary = write_summary(source, folder / "summary", runs)
    for g in summary["groups"]:
        acc = g["accuracy_percent_mean"]
        info(f"  {g['case_name']}: {g['avg_inference_ms_mean']:.3f} ms/img pure "
             f"(p99 {g['latency_p99_ms']:.3f}), {g['images_per_s_e2e']:.1f} img/s e2e"
             + (f", accuracy {acc:.2f}%" if acc is not None else ""))
    for r in summary["failed_runs"]:
        warn(f"failed: {r['case']} run {r['repeat']}: {r['reason']} (log: {r['log']})")
    for r in summary["skipped_runs"]:
        info(f"skipped: {r['case']} run {r['repeat']}: {r['reason']}")
    for f in summary["invalid_files"]:
        warn(f"invalid result file {f['file']}: {f['reason']}")
    info(f"[green]集計 / Summary:[/green] {folder / 'summary'}")
    return 0

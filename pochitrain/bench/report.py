"""Write the aggregate of a bench run: CSV, JSON, Markdown table and a PNG chart.

``summary/benchmark_summary.csv`` keeps the original's columns first (so its readers still
work) and adds batch size, p50/p90/p99 per-image latency, images/s and peak GPU memory.
``summary/benchmark_summary.json`` has the original's fields plus the local time with its
offset and the failed / skipped runs with their logs.
"""

from __future__ import annotations

import csv
import errno
import io
import json
from pathlib import Path
from typing import Any

from pochitrain.bench.aggregate import collect
from pochitrain.bench.result_json import JST
from pochitrain.errors import PochiError
from pochitrain.workspace import atomic_write_bytes, atomic_write_text, local_now

ORIGINAL_COLUMNS = ["case_name", "env_name", "runtime", "precision", "model_name", "pipeline",
                    "device", "runs", "avg_inference_ms_mean", "avg_inference_ms_stdev",
                    "avg_e2e_ms_mean", "avg_e2e_ms_stdev", "accuracy_percent_mean"]
COLUMNS = ORIGINAL_COLUMNS + ["batch_size", "latency_p50_ms", "latency_p90_ms",
                              "latency_p99_ms", "images_per_s_inference", "images_per_s_e2e",
                              "peak_gpu_memory_mb", "top_k_accuracy_percent_mean"]


def write_summary(source: Path, out_dir: Path,
                  runs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Aggregate every benchmark_result.json under ``source`` into ``out_dir``; return the
    summary dict (``files``: the paths written)."""
    groups, invalid, n_files = collect(source)
    rows = [g.row() for g in groups]
    now = local_now()
    runs = runs or []
    summary: dict[str, Any] = {
        "generated_at": now.isoformat(timespec="seconds"),
        "generated_at_jst": now.astimezone(JST).strftime("%Y-%m-%d %H:%M:%S"),
        "source_dir": str(source),
        "total_benchmark_files": n_files,
        "total_groups": len(rows),
        "invalid_files": invalid,
        "failed_runs": [r for r in runs if r.get("status") == "failed"],
        "skipped_runs": [r for r in runs if r.get("status") == "skipped"],
        "groups": [{**row, "source_files": g.files} for row, g in zip(rows, groups)],
    }
    files = [out_dir / "benchmark_summary.csv", out_dir / "benchmark_summary.json",
             out_dir / "benchmark_summary.md"] + ([out_dir / "benchmark_chart.png"] if rows else [])
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(files[0], _csv(rows))
        atomic_write_text(files[1], json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(files[2], markdown(summary))
        if rows:
            atomic_write_bytes(files[3], chart_png(rows))
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        raise PochiError("集計結果を書き込めません\n" + (
            f"Not enough disk space while writing the summary into {out_dir}." if full else
            f"Cannot write the summary into {out_dir}: {exc.strerror or exc}."),
            "Free some disk space, or make the folder writable (or copy the results to a "
            "writable folder and pass that to --aggregate-only).") from exc
    summary["files"] = [str(f) for f in files]
    return summary


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    return buf.getvalue()


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Benchmark summary ({summary['generated_at']})", "",
             (f"Source: `{summary['source_dir']}`, {summary['total_benchmark_files']} "
              f"result files, {summary['total_groups']} cases."), ""]
    head = ["case", "runtime", "precision", "pipeline", "device", "batch", "runs",
            "ms/img (pure)", "stdev", "p50", "p90", "p99", "ms/img (e2e)", "img/s (pure)",
            "img/s (e2e)", "accuracy %", "top-k %", "peak GPU MiB"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in summary["groups"]:
        cells = [g["case_name"], g["runtime"], g["precision"], g["pipeline"], g["device"],
                 g["batch_size"], g["runs"], g["avg_inference_ms_mean"],
                 g["avg_inference_ms_stdev"], g["latency_p50_ms"], g["latency_p90_ms"],
                 g["latency_p99_ms"], g["avg_e2e_ms_mean"], g["images_per_s_inference"],
                 g["images_per_s_e2e"], g["accuracy_percent_mean"],
                 g["top_k_accuracy_percent_mean"], g["peak_gpu_memory_mb"]]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    env = sorted({str(g["env_name"]) for g in summary["groups"]})
    if env:
        lines += ["", f"Environment: {', '.join(env)}"]
    for title, key in (("Failed runs", "failed_runs"), ("Skipped runs", "skipped_runs")):
        if summary[key]:
            lines += ["", f"## {title}", ""]
            for r in summary[key]:
                log = f" (log: `{r['log']}`)" if r.get("log") else ""
                lines.append(f"- {r['case']} run {r['repeat']}: {r['reason']}{log}")
    if summary["invalid_files"]:
        lines += ["", "## Invalid result files", ""]
        lines += [f"- `{f['file']}`: {f['reason']}" for f in summary["invalid_files"]]
    return "\n".join(lines) + "\n"


def chart_png(rows: list[dict[str, Any]]) -> bytes:
    """Per-image latency (mean with stdev, p99 marker) and images/s per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(r["case_name"]) for r in rows]
    y = list(range(len(rows)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 1.2 + 0.45 * len(rows)), sharey=True)
    ax1.barh(y, [r["avg_inference_ms_mean"] for r in rows],
             xerr=[r["avg_inference_ms_stdev"] for r in rows], color="#4C72B0", label="pure")
    ax1.scatter([r["latency_p99_ms"] for r in rows], y, marker="|", s=200, color="black",
                label="p99", zorder=3)
    ax1.set_xlabel("ms / image (pure, mean ± stdev)")
    ax1.legend(loc="lower right", fontsize=8)
    ax2.barh(y, [r["images_per_s_e2e"] for r in rows], color="#55A868", label="end-to-end")
    ax2.set_xlabel("images / s (end-to-end)")
    ax1.set_yticks(y, names)
    ax1.invert_yaxis()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()

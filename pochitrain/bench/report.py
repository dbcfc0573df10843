"""A bench run's aggregate: benchmark_result.json files -> one row per case -> CSV, JSON,
Markdown table and a PNG chart in ``summary/``.

Files are found recursively (files from the original tool aggregate too) and grouped by
(case, env, runtime, precision, model, pipeline, device, batch size); the case name comes from
the ``case_NNN_<name>`` folder a file lies in (else ``<runtime>_<pipeline>``). Per-image
latency percentiles pool every batch of every run of a group from ``benchmark_details.json``
(pure model time / images in the batch); without that file they fall back to the runs' means.

``benchmark_summary.csv`` keeps the original's columns first (so its readers still work) and
adds batch size, p50/p90/p99 per-image latency, images/s and peak GPU memory;
``benchmark_summary.json`` has the original's fields plus the local time with its offset and
the failed / skipped runs with their logs.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pochitrain.bench.result_json import DETAILS_FILE, JST, RESULT_FILE, RUNTIMES, TOP_KEYS
from pochitrain.errors import PochiError
from pochitrain.workspace import atomic_file, atomic_write_text, local_now

GROUP_KEYS = ("case_name", "env_name", "runtime", "precision", "model_name", "pipeline",
              "device", "batch_size")
_CASE_DIR = re.compile(r"^case_\d+_(.+)$")


@dataclass
class Group:
    key: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  # per image, pooled
    peak_gpu_mb: list[float] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        m = [r["metrics"] for r in self.runs]
        inf = [float(x["avg_inference_ms"]) for x in m]
        e2e = [float(x["avg_e2e_ms"]) for x in m]
        acc = [float(x["accuracy_percent"]) for x in m if x.get("accuracy_percent") is not None]
        top = [float(x["top_k_accuracy_percent"]) for x in m
               if x.get("top_k_accuracy_percent") is not None]
        lat = self.latencies_ms or inf
        return {
            **self.key,
            "runs": len(self.runs),
            "avg_inference_ms_mean": _r(statistics.fmean(inf)),
            "avg_inference_ms_stdev": _r(statistics.pstdev(inf)),  # 0 for one run
            "avg_e2e_ms_mean": _r(statistics.fmean(e2e)),
            "avg_e2e_ms_stdev": _r(statistics.pstdev(e2e)),
            "accuracy_percent_mean": _r(statistics.fmean(acc)) if acc else None,
            "top_k_accuracy_percent_mean": _r(statistics.fmean(top)) if top else None,
            "latency_p50_ms": _r(percentile(lat, 50)),
            "latency_p90_ms": _r(percentile(lat, 90)),
            "latency_p99_ms": _r(percentile(lat, 99)),
            "images_per_s_inference": _r(statistics.fmean(
                float(x["throughput_inference_ips"]) for x in m)),
            "images_per_s_e2e": _r(statistics.fmean(float(x["throughput_e2e_ips"]) for x in m)),
            "peak_gpu_memory_mb": max(self.peak_gpu_mb) if self.peak_gpu_mb else None,
        }


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of a non-empty list."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _r(value: float) -> float:
    return round(value, 4)


def valid_result(data: Any) -> str | None:
    """None when ``data`` is a usable benchmark_result.json, else why not."""
    if not isinstance(data, dict):
        return "not a JSON object"
    missing = [k for k in TOP_KEYS if k not in data]
    if missing:
        return f"missing {', '.join(missing)}"
    if data["runtime"] not in RUNTIMES:
        return f"unknown runtime {data['runtime']!r}"
    metrics = data.get("metrics")
    if not isinstance(metrics, dict):
        return "metrics is not an object"
    for k in ("avg_inference_ms", "avg_e2e_ms", "throughput_inference_ips",
              "throughput_e2e_ips"):
        if not isinstance(metrics.get(k), (int, float)):
            return f"metrics.{k} is not a number"
    return None


def case_name_of(path: Path, data: dict[str, Any]) -> str:
    for parent in path.parents:
        if m := _CASE_DIR.match(parent.name):
            return m.group(1)
    return f"{data['runtime']}_{data.get('pipeline')}"


def result_files(source: Path) -> list[Path]:
    """Every benchmark_result.json under ``source``, sorted (a failed run's file is set aside
    under another name by the runner, so it is not one of them)."""
    return sorted(source.rglob(RESULT_FILE))


def collect(source: Path) -> tuple[list[Group], list[dict[str, str]], int]:
    """(groups in first-seen order, invalid files with reasons, number of files found)."""
    groups: dict[tuple[Any, ...], Group] = {}
    invalid: list[dict[str, str]] = []
    files = result_files(source)
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            invalid.append({"file": str(path), "reason": f"unreadable: {exc}"})
            continue
        why = valid_result(data)
        if why is not None:
            invalid.append({"file": str(path), "reason": why})
            continue
        key = {"case_name": case_name_of(path, data),
               **{k: data.get(k) for k in GROUP_KEYS[1:-1]},
               "batch_size": (data.get("options") or {}).get("batch_size")}
        tkey = tuple(json.dumps(key[k]) for k in GROUP_KEYS)
        group = groups.setdefault(tkey, Group(key))
        group.runs.append(data)
        group.files.append(str(path))
        _add_details(group, path.parent / DETAILS_FILE)
    return list(groups.values()), invalid, len(files)


def _add_details(group: Group, path: Path) -> None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        pairs = list(zip(d["batch_images"], d["batch_pure_ms"]))
    except (OSError, ValueError, KeyError, TypeError):
        return
    group.latencies_ms.extend(float(ms) / n for n, ms in pairs if n)
    if isinstance(d.get("peak_gpu_memory_mb"), (int, float)):
        group.peak_gpu_mb.append(float(d["peak_gpu_memory_mb"]))


ORIGINAL_COLUMNS = ["case_name", "env_name", "runtime", "precision", "model_name", "pipeline",
                    "device", "runs", "avg_inference_ms_mean", "avg_inference_ms_stdev",
                    "avg_e2e_ms_mean", "avg_e2e_ms_stdev", "accuracy_percent_mean"]
COLUMNS = ORIGINAL_COLUMNS + ["batch_size", "latency_p50_ms", "latency_p90_ms",
                              "latency_p99_ms", "images_per_s_inference", "images_per_s_e2e",
                              "peak_gpu_memory_mb", "top_k_accuracy_percent_mean"]


def write_summary(source: Path, out_dir: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate every benchmark_result.json under ``source`` into ``out_dir``; return the
    summary dict (``files``: the paths written)."""
    groups, invalid, n_files = collect(source)
    rows = [g.row() for g in groups]
    now = local_now()
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
            write_chart(rows, files[3])
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


# the Markdown table: column title -> row key
MARKDOWN_COLUMNS = {
    "case": "case_name", "runtime": "runtime", "precision": "precision", "pipeline": "pipeline",
    "device": "device", "batch": "batch_size", "runs": "runs",
    "ms/img (pure)": "avg_inference_ms_mean", "stdev": "avg_inference_ms_stdev",
    "p50": "latency_p50_ms", "p90": "latency_p90_ms", "p99": "latency_p99_ms",
    "ms/img (e2e)": "avg_e2e_ms_mean", "img/s (pure)": "images_per_s_inference",
    "img/s (e2e)": "images_per_s_e2e", "accuracy %": "accuracy_percent_mean",
    "top-k %": "top_k_accuracy_percent_mean", "peak GPU MiB": "peak_gpu_memory_mb"}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Benchmark summary ({summary['generated_at']})", "",
             (f"Source: `{summary['source_dir']}`, {summary['total_benchmark_files']} "
              f"result files, {summary['total_groups']} cases."), ""]
    lines += ["| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
    for g in summary["groups"]:
        lines.append("| " + " | ".join(_fmt(g[k]) for k in MARKDOWN_COLUMNS.values()) + " |")
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


def write_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Per-image latency (mean with stdev, p99 marker) and images/s per case."""
    from pochitrain.plotting import figure, tight_layout

    names = [str(r["case_name"]) for r in rows]
    y = list(range(len(rows)))
    fig = figure(figsize=(11, 1.2 + 0.45 * len(rows)))
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
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
    tight_layout(fig)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)

"""benchmark_result.json files -> one row per case (mean, stdev, percentiles, throughput).

Files are found recursively (files from the original tool aggregate too). They are grouped by
(case, env, runtime, precision, model, pipeline, device, batch size). The case name comes from
the ``case_NNN_<name>`` folder a file lies in (else ``<runtime>_<pipeline>``). Per-image
latency percentiles pool every batch of every run of a group from ``benchmark_details.json``
(pure model time / images in the batch); without that file they fall back to the runs' means.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pochitrain.bench.result_json import DETAILS_FILE, RESULT_FILE, RUNTIMES, TOP_KEYS

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
            "avg_inference_ms_stdev": _r(_pstdev(inf)),
            "avg_e2e_ms_mean": _r(statistics.fmean(e2e)),
            "avg_e2e_ms_stdev": _r(_pstdev(e2e)),
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


def _pstdev(values: list[float]) -> float:
    return statistics.pstdev(values) if len(values) > 1 else 0.0  # the original's rule


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
        m = _CASE_DIR.match(parent.name)
        if m:
            return m.group(1)
    return f"{data['runtime']}_{data.get('pipeline')}"


class Collected(NamedTuple):
    groups: list[Group]
    invalid: list[dict[str, str]]  # files that could not be read, with the reason
    n_files: int


def result_files(source: Path) -> list[Path]:
    """Every benchmark_result.json under ``source``, sorted (a failed run's file is set aside
    under another name by the runner, so it is not one of them)."""
    return sorted(source.rglob(RESULT_FILE))


def collect(source: Path) -> Collected:
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
    return Collected(list(groups.values()), invalid, len(files))


def _add_details(group: Group, path: Path) -> None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        pairs = list(zip(d["batch_images"], d["batch_pure_ms"]))
    except (OSError, ValueError, KeyError, TypeError):
        return
    group.latencies_ms.extend(float(ms) / n for n, ms in pairs if n)
    if isinstance(d.get("peak_gpu_memory_mb"), (int, float)):
        group.peak_gpu_mb.append(float(d["peak_gpu_memory_mb"]))

"""``benchmark_result.json``: one inference run in the original's schema (version 1.0.0).

``pochi infer ... --benchmark-json`` writes it beside the reports, so files from the original
tool and from pochitrain aggregate together. The schema is fixed (no extra keys), so what it
has no room for goes into ``benchmark_details.json`` beside it: per-batch latencies (for the
p50/p90/p99 of ``pochi bench``), peak GPU memory and the local time with its UTC offset.

Precision comes from the model itself (``Runner.precision``), never from its file name: the
engine sidecar's ``precision`` (TensorRT), the ONNX graph (Q/DQ nodes -> int8, float16
weights -> fp16) and the PyTorch runner's autocast setting on CUDA (fp32 on the CPU).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pochitrain.workspace import atomic_write_text, local_now

if TYPE_CHECKING:
    from pochitrain.model import Model

SCHEMA_VERSION = "1.0.0"
RESULT_FILE = "benchmark_result.json"
DETAILS_FILE = "benchmark_details.json"
# The original's timestamp field is JST by name; it stays JST so old and new files compare.
JST = _dt.timezone(_dt.timedelta(hours=9), "JST")
RUNTIMES = ("pytorch", "onnx", "tensorrt")
TOP_KEYS = ("schema_version", "timestamp_jst", "env_name", "suite_name", "repeat_index",
            "runtime", "precision", "model_name", "pipeline", "device", "options", "metrics",
            "samples")


class LatencyProbe:
    """Wraps a Runner and records (images, pure seconds) of every ``run`` call."""

    def __init__(self, runner: Any) -> None:
        self._runner = runner
        self.calls: list[tuple[int, float]] = []

    def run(self, batch: Any) -> tuple[Any, float]:
        logits, pure = self._runner.run(batch)
        self.calls.append((len(batch), float(pure)))
        return logits, pure

    def submit(self, batch: Any) -> Any:
        """``run`` queued (``inference.runner.submit``), recorded when its result is read."""
        from pochitrain.inference.runner import Recorded, submit

        return Recorded(submit(self._runner, batch), len(batch), self.calls)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


class BenchProbe:
    """Attach to an open model before the loop, ``capture`` before it closes, then ``write``."""

    def __init__(self, model: Model, env_name: str | None) -> None:
        self.env_name = env_name or model.context.benchmark_env_name
        self.probe = LatencyProbe(model.runner)
        model.runner = self.probe
        self.context: dict[str, Any] = {}

    def capture(self, model: Model, pipeline_text: str) -> None:
        described = model.runner.describe()
        device = model.device
        gpu = described.get("gpu") or (_gpu_name() if device.startswith("cuda") else None)
        self.context = {
            "runtime": model.runtime, "device": device, "gpu": gpu,
            "precision": model.precision,
            "model_name": model.meta.model_name,
            "pipeline": pipeline_text.split(" ", 1)[0] or pipeline_text,
            "image_size": [int(v) for v in model.meta.preprocess.input_size],
            "gpu_copies": device.startswith("cuda"),  # pinned buffers, async copies
            "peak_gpu_memory_mb": _peak_gpu_memory_mb(),
        }

    def write(self, out_dir: Path, result: Any) -> list[Path]:
        data = result_dict(self.context, result, self.env_name)
        path = out_dir / RESULT_FILE
        atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        details = out_dir / DETAILS_FILE
        atomic_write_text(details, json.dumps(self._details(result), indent=2) + "\n")
        return [path, details]

    def _details(self, result: Any) -> dict[str, Any]:
        calls = list(self.probe.calls)
        if result.warmup_samples and calls:  # the loop's warm-up runs come first
            calls = calls[result.warmup_samples // max(1, calls[0][0]):]
        return {
            "timestamp_local": local_now().isoformat(timespec="seconds"),
            "batch_images": [n for n, _ in calls],
            "batch_pure_ms": [round(1000.0 * s, 6) for _, s in calls],
            "peak_gpu_memory_mb": self.context.get("peak_gpu_memory_mb"),
            "gpu": self.context.get("gpu"),
            "skipped_files": len(result.skipped),
        }


def result_dict(ctx: dict[str, Any], result: Any, env_name: str | None) -> dict[str, Any]:
    """The schema-1.0.0 record of one run (``ctx`` from ``BenchProbe.capture``)."""
    now = local_now().astimezone(JST)
    accuracy = result.accuracy
    return {
        "schema_version": SCHEMA_VERSION,
        "timestamp_jst": now.strftime("%Y-%m-%d %H:%M:%S"),
        "env_name": env_name or default_env_name(ctx.get("gpu")),
        "suite_name": None,
        "repeat_index": None,
        "runtime": ctx["runtime"],
        "precision": ctx["precision"],
        "model_name": ctx["model_name"],
        "pipeline": ctx["pipeline"],
        "device": ctx["device"],
        "options": {
            "gpu_non_blocking": bool(ctx["gpu_copies"]),
            "pin_memory": bool(ctx["gpu_copies"]),
            "batch_size": int(result.batch_size),
            "image_size": list(ctx["image_size"]),
        },
        "metrics": {
            "avg_inference_ms": _num(result.per_image_ms(result.pure_seconds)),
            "avg_e2e_ms": _num(result.per_image_ms(result.e2e_seconds)),
            "throughput_inference_ips": _num(result.images_per_second(result.pure_seconds)),
            "throughput_e2e_ips": _num(result.images_per_second(result.e2e_seconds)),
            "accuracy_percent": None if accuracy is None else round(100.0 * accuracy, 4),
            # added to the original's schema: top-k accuracy (k < classes, at most 5)
            "top_k": result.top_k,
            "top_k_accuracy_percent": (None if result.top_k_accuracy is None
                                       else round(100.0 * result.top_k_accuracy, 4)),
        },
        "samples": {
            "num_samples": int(result.measured),
            "measured_samples": int(result.measured),
            "warmup_samples": int(result.warmup_samples),
        },
    }


def _num(value: float) -> float:
    return round(float(value), 6) if math.isfinite(value) else 0.0  # NaN (no time) -> 0


def default_env_name(gpu: str | None) -> str:
    """The original's rule: ``<OS>-<GPU name without spaces>`` or ``<OS>-CPU``."""
    return f"{platform.system()}-{gpu.replace(' ', '') if gpu else 'CPU'}"


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a name is optional
        return None


def _peak_gpu_memory_mb() -> float | None:
    """Peak memory of the PyTorch CUDA allocator in this process (None without CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)

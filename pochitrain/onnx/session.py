"""The one place that opens ONNX Runtime sessions and runs padded fixed-batch inference.

Used by the ONNX runner (``pochi infer``), export verification, and the FP16 and INT8 checks,
so provider choice, thread count and the padding rule are the same everywhere.

Padding rule: a graph whose batch dimension is fixed (spec pattern 3) only takes batches of
exactly that size. A shorter chunk is padded by repeating its last image and the padded rows
are dropped from the output, so every returned row belongs to a real input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pochitrain.errors import BackendMissingError, ModelFileError

# Rows per call when the graph's batch is dynamic: large enough to amortise call overhead,
# small enough to keep memory flat on a small machine.
EVAL_BATCH = 32


def default_threads() -> int:
    """CPU threads for ONNX Runtime: the cores this process may use (affinity, containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# cuDNN's exhaustive convolution search (ORT's default) re-times every convolution for each
# new input shape: seconds per shape, paid again by the shorter last batch of every run.
_PROVIDER_OPTIONS: dict[str, dict[str, str]] = {
    "CUDAExecutionProvider": {"cudnn_conv_algo_search": "HEURISTIC"},
}


def _with_options(name: str) -> Any:
    options = _PROVIDER_OPTIONS.get(name)
    return (name, options) if options else name


def open_session(path: Path | str, providers: list[str] | None = None,
                 threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``path``.

    ``providers``: full ONNX Runtime provider names (CPU when None). ModelFileError when ONNX
    Runtime cannot load the graph; BackendMissingError when onnxruntime is missing or a GPU
    provider silently failed to start.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendMissingError("onnxruntime is not installed.",
                                  "pip install onnxruntime (or onnxruntime-gpu).") from exc
    names = providers or ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.log_severity_level = 3  # errors only: provider fallbacks are checked below
    try:
        session = ort.InferenceSession(str(path), sess_options=options,
                                       providers=[_with_options(n) for n in names])
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise ModelFileError(
            f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:300]}",
            "The graph may use operators or an opset this onnxruntime does not support; "
            "re-export it with export-onnx (default opset 17) or upgrade onnxruntime.",
        ) from exc
    # A GPU provider that fails to initialise (CUDA/cuDNN mismatch) is silently dropped by ORT.
    dropped = [n for n in names if n not in session.get_providers()]
    if dropped:
        raise BackendMissingError(
            f"ONNX Runtime could not start {', '.join(dropped)} "
            f"(session runs on {', '.join(session.get_providers())}).",
            "Check that the CUDA / cuDNN (and TensorRT) versions match your onnxruntime-gpu "
            "build, or use --providers cpu.",
        )
    return session


def fixed_batch_of(session: Any) -> int | None:
    """The graph's batch size when it is fixed (pattern 3), else None."""
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) and dim > 0 else None


def pad_to(batch: np.ndarray, size: int) -> np.ndarray:
    """Repeat the last row until ``batch`` has ``size`` rows (size >= len(batch))."""
    short = size - len(batch)
    if short <= 0:
        return batch
    return np.concatenate([batch, np.repeat(batch[-1:], short, axis=0)])


def run_all(session: Any, data: np.ndarray, batch: int | None = None) -> np.ndarray:
    """Logits of every row of ``data`` (N, C, H, W): float32 (N, K).

    Runs in chunks of the graph's fixed batch (padding the last one) or of ``batch``
    (default ``EVAL_BATCH``) when the batch is dynamic.
    """
    name = session.get_inputs()[0].name
    fixed = fixed_batch_of(session)
    step = fixed or batch or EVAL_BATCH
    outs = []
    for start in range(0, len(data), step):
        chunk = np.ascontiguousarray(data[start:start + step], dtype=np.float32)
        n = len(chunk)
        if fixed:
            chunk = pad_to(chunk, fixed)
        outs.append(np.asarray(session.run(None, {name: chunk})[0], dtype=np.float32)[:n])
    if not outs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(outs)


def top1_agreement(reference: np.ndarray, other: np.ndarray) -> float:
    """Share of rows whose argmax is the same in both logit arrays (1.0 for no rows)."""
    if len(reference) == 0:
        return 1.0
    return float(np.mean(reference.argmax(1) == other.argmax(1)))

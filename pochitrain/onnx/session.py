"""The one place that opens ONNX Runtime sessions (runner, export verification, FP16 and
INT8 checks: the same providers and threads everywhere); ``run_all`` runs a whole array."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pochitrain.batching import run_chunked
from pochitrain.errors import BackendMissingError, ModelFileError, first_line

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
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {
    "CUDAExecutionProvider": {"cudnn_conv_algo_search": "HEURISTIC"},
}


def open_session(path: Path | str, providers: list[str] | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``path`` (``providers``: full names, CPU when
    None); BackendMissingError also when a GPU provider silently failed to start."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendMissingError("onnxruntime がインストールされていません\n"
                                  "onnxruntime is not installed.",
                                  "pip install onnxruntime (or onnxruntime-gpu).") from exc
    names = providers or ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = default_threads()
    options.log_severity_level = 3  # errors only: provider fallbacks are checked below
    try:
        session = ort.InferenceSession(str(path), sess_options=options,
                                       providers=[(n, PROVIDER_OPTIONS[n]) if n in PROVIDER_OPTIONS
                                                  else n for n in names])
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        if "INVALID_PROTOBUF" in str(exc):
            from pochitrain.onnx.inspect import unreadable

            raise unreadable(Path(path), "the protobuf does not parse") from exc
        raise ModelFileError(
            "ONNX Runtime でモデルを読み込めません\n"
            f"ONNX Runtime cannot load {path}: {first_line(exc)}",
            "The graph may use operators or an opset this onnxruntime does not support; "
            "re-export it with export-onnx (default opset 17) or upgrade onnxruntime.",
        ) from exc
    # A GPU provider that fails to initialise (CUDA/cuDNN mismatch) is silently dropped by ORT.
    dropped = [n for n in names if n not in session.get_providers()]
    if dropped:
        raise BackendMissingError(
            "ONNX Runtime のセッションを開始できませんでした\n"
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


def run_all(session: Any, data: np.ndarray, batch: int | None = None) -> np.ndarray:
    """float32 logits of every row of ``data``, in chunks of the graph's fixed batch
    (the last one padded) or of ``batch`` (``EVAL_BATCH``)."""
    name = session.get_inputs()[0].name
    return run_chunked(lambda chunk: session.run(None, {name: chunk})[0], data,
                       batch or EVAL_BATCH, fixed_batch_of(session))


def top1_agreement(reference: np.ndarray, other: np.ndarray) -> float:
    """Share of rows whose argmax is the same in both logit arrays (1.0 for no rows)."""
    if len(reference) == 0:
        return 1.0
    return float(np.mean(reference.argmax(1) == other.argmax(1)))

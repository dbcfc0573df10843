"""The Runner protocol: what every runtime (PyTorch, ONNX Runtime, TensorRT) provides.

The shared loop (``pochitrain.inference.loop``) decodes and preprocesses images, hands float32
NCHW batches to ``Runner.run`` and gets float32 logits back, so CSVs, summaries and timings are
comparable across runtimes.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Runner(Protocol):
    #: file prefix and display name: "pytorch", "onnx" or "tensorrt"
    name: str

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        """(N, 3, H, W) float32 -> ((N, num_classes) float32 logits, pure seconds).

        "Pure" seconds cover the model call alone (CUDA-event time on GPUs).
        """
        ...

    def check_batch_size(self, batch_size: int) -> None:
        """Raise UsageError when the runtime cannot serve this batch size."""
        ...

    def describe(self) -> dict[str, str]:
        """Extra summary lines, e.g. {"providers": "CPUExecutionProvider"}."""
        ...

    def close(self) -> None:
        ...

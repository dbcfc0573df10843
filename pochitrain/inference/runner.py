"""The Runner protocol: what every runtime (PyTorch, ONNX Runtime, TensorRT) provides.

The shared loop (``pochitrain.inference.loop``) decodes and preprocesses images, hands float32
NCHW batches to ``Runner.run`` and gets float32 logits back, so CSVs, summaries and timings are
comparable across runtimes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RunnerInput:
    """What a runner's model takes, as the runner states it.

    ``fixed_batch``: its only batch size (None: any); ``fixed_hw``: the H, W the model file
    is built for (None: any); ``device``: where its input batches should live ("cpu",
    "cuda", "cuda:N"); ``default_batch``: the batch the model was built for (an engine
    profile's opt), None when the caller chooses.
    """

    fixed_batch: int | None
    fixed_hw: tuple[int, int] | None
    device: str
    default_batch: int | None = None


class Runner(Protocol):
    #: file prefix and display name: "pytorch", "onnx" or "tensorrt"
    name: str

    @property
    def input(self) -> RunnerInput:
        """The input metadata of the model this runner runs."""
        ...

    @property
    def precision(self) -> str | None:
        """fp32 | fp16 | bf16 | int8 as the model itself says (None: not recorded)."""
        ...

    def run(self, batch: np.ndarray | torch.Tensor) -> tuple[np.ndarray, float]:
        """(N, 3, H, W) float32 -> ((N, num_classes) float32 logits, pure seconds).

        ``batch`` is a NumPy array, or a tensor on ``input.device`` from the GPU input
        pipeline.
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

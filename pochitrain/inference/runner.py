"""The Runner protocol: what every runtime (PyTorch, ONNX Runtime, TensorRT) provides.

The shared loop (``pochitrain.inference.loop``) decodes and preprocesses images, hands float32
NCHW batches to ``Runner.run`` and gets float32 logits back, so CSVs, summaries and timings are
comparable across runtimes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

# the most untimed warm-up runs an inference command takes (--warmup, a bench suite's warmup):
# more only delays the first result
MAX_WARMUP_RUNS = 1000


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


IN_FLIGHT = 2  # batches queued on a runner at once (its CUDA path keeps buffers for each)


class Pending(Protocol):
    """A batch handed to a runner whose result is read later (``submit``)."""

    def result(self) -> tuple[np.ndarray, float]:
        """(logits, pure seconds), as ``Runner.run`` returns them; waits for the device."""
        ...


class Done(NamedTuple):
    """A result computed at once, for runners that do not queue batches."""

    logits: np.ndarray
    pure: float

    def result(self) -> tuple[np.ndarray, float]:
        return self.logits, self.pure


def submit(runner: Any, batch: np.ndarray | torch.Tensor) -> Pending:
    """``runner.submit(batch)`` where the runner queues batches on its device (the next
    batch is queued before this one's result is read, so the device never waits for the
    host between batches); elsewhere ``run`` now. Read the results in submission order."""
    queue = getattr(runner, "submit", None)
    return queue(batch) if queue is not None else Done(*runner.run(batch))


class Recorded:
    """A pending result that appends (images, pure seconds) to ``calls`` when it is read."""

    def __init__(self, pending: Pending, images: int, calls: list[tuple[int, float]]) -> None:
        self.pending, self.images, self.calls = pending, images, calls

    def result(self) -> tuple[np.ndarray, float]:
        logits, pure = self.pending.result()
        self.calls.append((self.images, float(pure)))
        return logits, pure

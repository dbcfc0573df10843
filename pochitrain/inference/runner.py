"""The Runner protocol: what every runtime (PyTorch, ONNX Runtime, TensorRT) provides, so
results and timings of the shared loop (``inference.loop``) compare across runtimes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from pochitrain.errors import UsageError

if TYPE_CHECKING:
    import torch

@dataclass(frozen=True)
class RunnerInput:
    """What a runner's model takes, as the runner states it (None: any, or the caller's
    choice)."""

    fixed_batch: int | None  # its only batch size
    fixed_hw: tuple[int, int] | None  # the H, W the model file is built for
    device: str  # where its input batches should live: "cpu", "cuda", "cuda:N"
    default_batch: int | None = None  # the batch it was built for (an engine profile's opt)


class Runner(Protocol):
    #: file prefix and display name: "pytorch", "onnx" or "tensorrt"
    name: str

    @property
    def input(self) -> RunnerInput:
        ...

    @property
    def precision(self) -> str | None:
        """fp32 | fp16 | bf16 | int8 as the model itself says (None: not recorded)."""
        ...

    def run(self, batch: np.ndarray | torch.Tensor) -> tuple[np.ndarray, float]:
        """(N, 3, H, W) float32 array, or a tensor on ``input.device`` from the GPU input
        pipeline -> ((N, num_classes) float32 logits, seconds of the model call alone)."""
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


def check_positive_batch(batch_size: int) -> None:
    if batch_size < 1:
        raise UsageError("--batch-size は 1 以上にしてください\n"
                         f"--batch-size must be 1 or more, got {batch_size}.")


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


def submit(runner: Runner, batch: np.ndarray | torch.Tensor) -> Pending:
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

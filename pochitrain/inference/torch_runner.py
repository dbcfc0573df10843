"""PyTorch runner: plain eager on the CPU; on CUDA it goes through the shared CUDA path.

GPU options (``TorchOptions``): autocast precision (fp32 / fp16 / bf16), channels_last and
CUDA graph replay for fixed batch shapes. A batch that does not fit in GPU memory becomes a
``GpuMemoryError`` naming the largest batch size that does, found by bisection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pochitrain.errors import GpuMemoryError, UsageError
from pochitrain.inference.runner import Done, Pending, RunnerInput, check_positive_batch

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class TorchOptions:
    precision: str = "fp32"  # fp32 | fp16 | bf16 (autocast)
    channels_last: bool = False
    cuda_graph: bool = False

    def check(self, device: str) -> None:
        """UsageError for options this device cannot honour."""
        if self.precision not in PRECISIONS:
            raise UsageError("不明な精度が指定されています\n"
                             f"Unknown precision {self.precision!r}.",
                             f"Use one of: {', '.join(PRECISIONS)}.")
        on_gpu = device.startswith("cuda")
        if not on_gpu and (self.precision != "fp32" or self.cuda_graph):
            what = "--cuda-graph" if self.cuda_graph else f"--precision {self.precision}"
            raise UsageError("この精度には CUDA GPU が必要です\n"
                             f"{what} needs a CUDA GPU; this run uses the CPU.",
                             "Drop the option, or run with --device cuda on an NVIDIA GPU.")
        if on_gpu and self.precision == "bf16":
            import torch

            if not torch.cuda.is_bf16_supported():
                raise UsageError("この GPU は bfloat16 に対応していません\n"
                                 "This GPU has no bfloat16 support (needs compute capability "
                                 "8.0 or newer).", "Use --precision fp16.")

    def amp_dtype(self) -> torch.dtype | None:
        import torch

        return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]


def largest_fitting_batch(fits: Callable[[int], bool], too_big: int) -> int:
    """Largest n < ``too_big`` with ``fits(n)`` (memory use grows with n); 0 if none fits."""
    lo, hi = 0, too_big  # fits(lo) holds (0 trivially), fits(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


class TorchRunner:
    name = "pytorch"

    def __init__(self, model: torch.nn.Module, device: str = "cpu",
                 options: TorchOptions | None = None,
                 pipe: Any = None) -> None:
        import torch

        self._torch = torch
        self.device = device
        self.options = options or TorchOptions()
        self.options.check(device)
        model = model.to(device).eval()
        if self.options.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self._pipe: Any = pipe  # injectable (tests); created on the first GPU batch
        self._call: Any = None
        # cudnn.benchmark stays off: each new batch shape (the last, smaller batch) would
        # autotune inside the timed loop, costing far more than it saves here.

    @property
    def input(self) -> RunnerInput:
        return RunnerInput(None, None, self.device)

    @property
    def precision(self) -> str:
        """Autocast precision on CUDA; a checkpoint runs in fp32 on the CPU."""
        return self.options.precision if self.device.startswith("cuda") else "fp32"

    def check_batch_size(self, batch_size: int) -> None:
        check_positive_batch(batch_size)

    def _model_call(self) -> Any:
        if self._call is None:
            from pochitrain.inference.cuda_path import CudaGraphCall, torch_call

            call = torch_call(self.model, self.options.amp_dtype(), self.options.channels_last)
            self._call = CudaGraphCall(call) if self.options.cuda_graph else call
        return self._call

    def run(self, batch: np.ndarray | torch.Tensor) -> tuple[np.ndarray, float]:
        """(N, 3, H, W) float32 array (or CUDA tensor from the GPU pipeline) -> logits, pure s."""
        return self.submit(batch).result()

    def submit(self, batch: np.ndarray | torch.Tensor) -> Pending:
        """``run`` queued on the GPU (read the results in order, ``runner.submit``); on the
        CPU, or through a pipe that cannot queue, the batch runs now."""
        torch = self._torch
        try:
            if self.device == "cpu" and self._pipe is None:
                return Done(*self._run_on_cpu(batch))
            if self._pipe is None:
                from pochitrain.inference.cuda_path import CudaBatchPipe

                self._pipe = CudaBatchPipe(self.device)
            queue = getattr(self._pipe, "submit", None)
            if queue is None:
                return Done(*self._pipe.run(batch, self._model_call()))
            return queue(batch, self._model_call())
        except torch.cuda.OutOfMemoryError:
            raise self._memory_error(tuple(batch.shape)) from None

    def _run_on_cpu(self, batch: np.ndarray | torch.Tensor) -> tuple[np.ndarray, float]:
        torch = self._torch
        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(batch)
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            start = time.perf_counter()
            out = self.model(x)
            pure = time.perf_counter() - start
        return out.float().numpy(), pure

    def _fits(self, shape: tuple[int, ...]) -> Callable[[int], bool]:
        from pochitrain.inference.cuda_path import CudaGraphCall

        torch = self._torch
        call = self._model_call()
        if isinstance(call, CudaGraphCall):
            call = call.call  # probe eagerly: graphs would capture every probed size

        def fits(n: int) -> bool:
            try:
                x = torch.randn((n, *shape[1:]), device=self.device)
                call(x, None, None)
                if self.device.startswith("cuda"):
                    torch.cuda.synchronize(self.device)
                return True
            except torch.cuda.OutOfMemoryError:
                return False
            finally:
                if self.device.startswith("cuda"):
                    torch.cuda.empty_cache()

        return fits

    def _memory_error(self, shape: tuple[int, ...]) -> GpuMemoryError:
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
        best = largest_fitting_batch(self._fits(shape), shape[0])
        size = "x".join(str(v) for v in shape[1:])
        if best == 0:
            return GpuMemoryError(
                f"GPU のメモリが足りません。\nNot even one {size} image fits in the GPU memory "
                f"left on {self.device} with precision {self.options.precision}.",
                "Free GPU memory (other processes), use --precision fp16, or run on the CPU "
                "with --device cpu.")
        return GpuMemoryError(
            f"GPU のメモリが足りません。\nA batch of {shape[0]} {size} images does not fit in "
            f"the GPU memory of {self.device} (precision {self.options.precision}); the largest "
            f"batch that fits now is {best}.",
            f"Use --batch-size {best} or smaller.")

    def describe(self) -> dict[str, str]:
        torch = self._torch
        info = {"device": self.device, "torch": torch.__version__}
        if self.device.startswith("cuda"):
            info["gpu"] = torch.cuda.get_device_name(self.device)
            opts = self.options
            info["precision"] = opts.precision + (" autocast" if opts.precision != "fp32" else "")
            info["channels_last"] = str(opts.channels_last)
            info["cuda_graph"] = str(opts.cuda_graph)
        return info

    def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
        self._pipe = None
        self._call = None

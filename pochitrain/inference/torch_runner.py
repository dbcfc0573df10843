"""PyTorch runner: CPU here; on CUDA it goes through the shared CUDA path."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pochitrain.errors import BackendMissingError, UsageError


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available else 'cpu'; 'cuda' without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendMissingError(
            f"device={device!r} was asked for, but no CUDA device is available here.",
            "Use --device cpu (or auto), or run on a machine with an NVIDIA GPU and a CUDA "
            "build of PyTorch.",
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"Unknown device {device!r}.", "Use auto, cpu, cuda or cuda:N.")
    return device


class TorchRunner:
    name = "pytorch"

    def __init__(self, model, device: str = "cpu") -> None:
        import torch

        self._torch = torch
        self.device = device
        self.model = model.to(device).eval()
        self._pipe: Any = None

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size < 1:
            raise UsageError(f"--batch-size must be 1 or more, got {batch_size}.")

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        torch = self._torch
        if self.device == "cpu":
            x = torch.from_numpy(batch)
            with torch.inference_mode():
                start = time.perf_counter()
                out = self.model(x)
                pure = time.perf_counter() - start
            return out.float().numpy(), pure
        if self._pipe is None:
            from pochitrain.inference.cuda_path import CudaBatchPipe

            self._pipe = CudaBatchPipe(self.device)
        from pochitrain.inference.cuda_path import torch_call

        return self._pipe.run(batch, torch_call(self.model))

    def describe(self) -> dict[str, str]:
        torch = self._torch
        info = {"device": self.device, "torch": torch.__version__}
        if self.device.startswith("cuda"):
            info["gpu"] = torch.cuda.get_device_name(self.device)
        return info

    def close(self) -> None:
        self._pipe = None

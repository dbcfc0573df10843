"""ONNX Runtime runner: CPU by default, CUDA / TensorRT execution providers when asked.

A static-batch model (spec pattern 3) serves only its own ``--batch-size``; the loop's last,
shorter batch is padded up to it and the padded rows dropped from the output.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from pochitrain.batching import pad_to
from pochitrain.errors import BackendMissingError, ShapeError, UsageError, first_line
from pochitrain.inference.runner import RunnerInput, check_positive_batch

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from pochitrain.onnx.inspect import OnnxInfo

# short names accepted by --providers -> ONNX Runtime provider names
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}
_GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}


def resolve_providers(requested: list[str] | None, available: list[str]) -> list[str]:
    """Map aliases to provider names, check they are installed, keep CPU as the last fallback."""
    names: list[str] = []
    for item in requested or ["cpu"]:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            name = PROVIDER_ALIASES.get(part.lower(), part)
            if not name.endswith("ExecutionProvider"):
                known = ", ".join(sorted(PROVIDER_ALIASES))
                raise UsageError("不明な ONNX Runtime のプロバイダーです\n"
                                 f"Unknown ONNX Runtime provider {part!r}.",
                                 f"Use one of: {known}, or a full name like CUDAExecutionProvider.")
            if name not in available:
                raise _missing_provider(name, available)
            if name not in names:
                names.append(name)
    if "CPUExecutionProvider" not in names:
        names.append("CPUExecutionProvider")
    return names


def _missing_provider(name: str, available: list[str]) -> BackendMissingError:
    if name in _GPU_PROVIDERS:
        remedy = ("Install the GPU build instead of the CPU one: pip uninstall onnxruntime && "
                  "pip install onnxruntime-gpu (it needs a matching CUDA / cuDNN; the "
                  "TensorRT provider also needs TensorRT libraries). Or use --providers cpu.")
    else:
        remedy = "Install an onnxruntime build that ships this provider, or use --providers cpu."
    return BackendMissingError(
        "指定した ONNX Runtime のプロバイダーが使えません\n"
        f"ONNX Runtime provider {name} is not available in this installation "
        f"(available: {', '.join(available)}).",
        remedy,
    )


class OnnxRunner:
    """One ONNX Runtime session; ``run`` times ``session.run`` alone ("pure" time)."""

    name = "onnx"

    def __init__(self, session, info: OnnxInfo) -> None:
        self.session = session
        self.info = info
        batch = info.input_shape[0]
        self.fixed_batch: int | None = batch if isinstance(batch, int) else None
        self._dtype = np.float16 if info.input_dtype == "float16" else np.float32

    @property
    def input(self) -> RunnerInput:
        return RunnerInput(self.fixed_batch, self.info.fixed_hw,
                           "cuda" if self.on_cuda else "cpu")

    @property
    def precision(self) -> str:
        from pochitrain.onnx.inspect import graph_precision

        return graph_precision(self.info.path)

    def check_batch_size(self, batch_size: int) -> None:
        check_positive_batch(batch_size)
        if self.fixed_batch is not None and batch_size != self.fixed_batch:
            raise UsageError(
                "このモデルはバッチサイズが固定されています\n"
                f"{self.info.path.name} has a fixed batch size of {self.fixed_batch} "
                f"(input shape {self.info.shape_text()}); --batch-size {batch_size} cannot run.",
                f"Use --batch-size {self.fixed_batch}, or re-export with a dynamic batch "
                "(export-onnx without --static-batch).",
            )

    @property
    def on_cuda(self) -> bool:
        return "CUDAExecutionProvider" in (self.session.get_providers() if self.session else [])

    def run(self, batch: np.ndarray | torch.Tensor) -> tuple[np.ndarray, float]:
        """(N, C, H, W) float32 NumPy array, or a torch tensor from the GPU input pipeline
        (bound in place with IOBinding: a CUDA tensor never goes through host memory)."""
        if not isinstance(batch, np.ndarray):
            return self._run_bound(batch)
        n = len(batch)
        if self.fixed_batch is not None:
            if n > self.fixed_batch:
                self.check_batch_size(n)
            batch = pad_to(batch, self.fixed_batch)  # the loop's last, shorter batch
        feed = {self.info.input_name: np.ascontiguousarray(batch, dtype=self._dtype)}
        out, pure = self._timed(batch.shape, self.session.run, [self.info.output_name], feed)
        return np.asarray(out[0][:n], dtype=np.float32), pure

    def _run_bound(self, batch: torch.Tensor) -> tuple[np.ndarray, float]:
        """IOBinding on the tensor's own memory (CUDA or CPU) and a preallocated output."""
        import torch

        n = int(batch.shape[0])
        x = batch.to(torch.float16 if self._dtype == np.float16 else torch.float32)
        if self.fixed_batch is not None and n < self.fixed_batch:
            x = torch.cat([x, x[-1:].expand(self.fixed_batch - n, *x.shape[1:])])
        x = x.contiguous()
        classes = self.info.output_shape[1]
        out = torch.empty((x.shape[0], int(classes)), dtype=torch.float32, device=x.device)
        kind, index = ("cuda", x.device.index or 0) if x.is_cuda else ("cpu", 0)
        binding = self.session.io_binding()
        binding.bind_input(self.info.input_name, kind, index, self._dtype, tuple(x.shape),
                           x.data_ptr())
        binding.bind_output(self.info.output_name, kind, index, np.float32, tuple(out.shape),
                            out.data_ptr())
        if x.is_cuda:
            torch.cuda.current_stream(x.device).synchronize()  # the batch is written
        _, pure = self._timed(x.shape, self.session.run_with_iobinding, binding)
        return out[:n].cpu().numpy(), pure

    def _timed(self, shape: Any, call: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        """(what ``call(*args)`` returns, its seconds): the "pure" time of one session run."""
        try:
            start = time.perf_counter()
            result = call(*args)
            return result, time.perf_counter() - start
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise ShapeError(
                "ONNX Runtime でバッチを実行できませんでした\n"
                f"ONNX Runtime could not run {self.info.path.name} on a batch of shape "
                f"{list(shape)} (model input {self.info.shape_text()}): "
                f"{first_line(exc)}",
                "Check that the preprocessing size matches the model's input size "
                "(-c CONFIG or re-export with --input-size H W).",
            ) from exc

    def describe(self) -> dict[str, str]:
        import onnxruntime as ort

        return {"providers": ", ".join(self.session.get_providers()),
                "onnxruntime": ort.__version__}

    def close(self) -> None:
        self.session = None


def check_single_install() -> None:
    """onnxruntime and onnxruntime-gpu installed into the same folder overwrite each other's
    files (same import name): whichever came last wins, and uninstalling either breaks the
    other. Say so once, with the commands that fix it."""
    import importlib.metadata as md

    roots = {}
    for name in ("onnxruntime", "onnxruntime-gpu"):
        with contextlib.suppress(md.PackageNotFoundError):
            roots[name] = str(md.distribution(name).locate_file(""))
    if len(roots) == 2 and len(set(roots.values())) == 1:
        from pochitrain.console import warn

        warn("both onnxruntime and onnxruntime-gpu are installed in "
             f"{roots['onnxruntime']}: they share one import name and overwrite each other's "
             "files. Keep one: pip uninstall -y onnxruntime onnxruntime-gpu && pip install "
             "onnxruntime-gpu (GPU) or onnxruntime (CPU).")


def _gpu_visible() -> bool:
    """An NVIDIA driver is loaded (desktop GPUs, or Jetson's integrated one)."""
    import os

    return any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidia0",
                                           "/dev/nvhost-ctrl-gpu")) or os.name == "nt"


def open_onnx_runner(path: Path | str,
                     providers: list[str] | None = None) -> tuple[OnnxRunner, OnnxInfo]:
    """Open an ONNX Runtime session on ``path``, then check the model (``session_info``).
    ``providers`` None: CUDA when onnxruntime-gpu and an NVIDIA GPU are present (else, or when
    CUDA cannot start, the CPU with a notice)."""
    from pochitrain.onnx.inspect import check_file, session_info
    from pochitrain.onnx.session import open_session

    path = check_file(path)
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendMissingError(
            "onnxruntime がインストールされていません\n"
            "onnxruntime is not installed.",
            'pip install onnxruntime (CPU) or pip install "pochitrain[gpu]" (CUDA).') from exc
    check_single_install()
    available = ort.get_available_providers()
    auto = providers is None
    if auto:
        providers = ["cuda"] if "CUDAExecutionProvider" in available and _gpu_visible() \
            else ["cpu"]
    names = resolve_providers(providers, available)
    if "CUDAExecutionProvider" in names and hasattr(ort, "preload_dlls"):
        # CUDA / cuDNN come from the nvidia-* wheels or torch's own copies (no system
        # CUDA needed); ORT >= 1.21 finds and loads them here. Best effort: the session's own
        # check below says what is still missing.
        with contextlib.suppress(Exception):  # a missing library is reported by the session
            ort.preload_dlls()
    try:
        session = open_session(path, names)
    except BackendMissingError:
        if not auto or names == ["CPUExecutionProvider"]:
            raise
        from pochitrain.console import info as say

        say("CUDA を使えないため CPU で推論します / ONNX Runtime could not start CUDA here: "
            "running on the CPU (--providers cuda makes this an error).")
        session = open_session(path, ["CPUExecutionProvider"])
    info = session_info(path, session)
    return OnnxRunner(session, info), info

"""The one CUDA path shared by the GPU runners (PyTorch and TensorRT), built on ``torch.cuda``.

Per batch: pinned host buffer -> async copy to the device on a non-default stream -> the model
call between two CUDA events ("pure" time) -> async copy back -> one synchronize. ``submit``
queues that and returns, so the next batch is queued while this one runs (``IN_FLIGHT`` at
most, each with its own buffers, sized by the largest batch seen). A batch that is already a
CUDA tensor (``pochitrain.gpu_input``) skips the staging. Only the model call differs between
runtimes: ``call(d_in, d_out, stream)`` fills ``d_out`` (TensorRT) or, when no ``out_shape``
was given, returns its device output (PyTorch, ``torch_call``); ``CudaGraphCall`` replays any
call from a captured CUDA graph. Without CUDA the pipe raises BackendMissingError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pochitrain.errors import BackendMissingError
from pochitrain.inference.runner import IN_FLIGHT

if TYPE_CHECKING:
    import torch

ModelCall = Callable[[Any, Any, Any], Any]


class BatchPipe(Protocol):
    """What a runner needs from the CUDA path (tests use a CPU stand-in with this interface)."""

    def run(self, batch: np.ndarray | torch.Tensor, call: ModelCall,
            out_shape: Sequence[int] | None = None,
            out_dtype: Any = np.float32) -> tuple[np.ndarray, float]:
        ...

    def close(self) -> None:
        ...


def require_cuda(device: str = "cuda") -> str:
    """Return the GPU's name and compute capability; BackendMissingError when there is none."""
    import torch

    if not torch.cuda.is_available():
        raise BackendMissingError(
            "CUDA デバイスがありません。\nNo CUDA device is available on this machine "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}).",
            "Run on a machine with an NVIDIA GPU and driver, and a CUDA build of PyTorch "
            "(for ONNX Runtime on the CPU use infer-onnx instead).",
        )
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"


def torch_call(model: Any, amp_dtype: Any = None, channels_last: bool = False) -> ModelCall:
    """The model call for a PyTorch module already on its device; ``amp_dtype``: autocast
    (logits come back as float32); ``channels_last``: NHWC input (for a converted model)."""
    import torch

    def call(d_in: torch.Tensor, d_out: torch.Tensor | None, stream: Any) -> torch.Tensor | None:
        x = d_in.contiguous(memory_format=torch.channels_last) if channels_last else d_in
        # cache_enabled=False: the autocast weight cache does not survive graph capture
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=amp_dtype,
                                                    enabled=amp_dtype is not None,
                                                    cache_enabled=False):
            y = model(x)
        if amp_dtype is not None:
            y = y.float()
        if d_out is None:
            return y
        d_out.copy_(y)
        return None

    return call


class CudaGraphCall:
    """A model call replayed from a captured CUDA graph, one graph per input shape (at most
    ``max_graphs``: the batch size and the last, smaller batch; others run eagerly). A shape
    runs twice eagerly first (cuDNN autotuning, lazy init); replay removes the per-kernel
    launch cost."""

    max_graphs = 2

    def __init__(self, call: ModelCall) -> None:
        self.call = call
        self._graphs: dict[tuple[Any, ...], tuple[Any, Any, Any, Any]] = {}

    def __call__(self, d_in: torch.Tensor, d_out: torch.Tensor | None, stream: Any) -> Any:
        key = (tuple(d_in.shape), d_in.dtype, None if d_out is None else tuple(d_out.shape))
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.max_graphs:
                return self.call(d_in, d_out, stream)
            entry = self._graphs[key] = self._capture(d_in, d_out, stream)
        static_in, static_out, result, graph = entry
        static_in.copy_(d_in)
        graph.replay()
        if d_out is None:
            return result
        d_out.copy_(static_out)
        return None

    def _capture(self, d_in: torch.Tensor, d_out: torch.Tensor | None,
                 stream: Any) -> tuple[Any, Any, Any, Any]:
        import torch

        static_in = d_in.clone()
        static_out = None if d_out is None else torch.empty_like(d_out)
        for _ in range(2):
            self.call(static_in, static_out, stream)
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the GPU input pipeline's producer thread keeps working meanwhile
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            result = self.call(static_in, static_out, stream)
        return static_in, static_out, result, graph


class Queued:
    """One batch queued on a :class:`CudaBatchPipe`: its logits land in a pinned buffer."""

    def __init__(self, h_out: torch.Tensor, events: tuple[Any, Any, Any]) -> None:
        self.h_out, self.events = h_out, events

    def result(self) -> tuple[np.ndarray, float]:
        start, end, done = self.events
        done.synchronize()
        pure = start.elapsed_time(end) / 1000.0
        return self.h_out.numpy().astype(np.float32, copy=True), pure


class CudaBatchPipe:
    """Pinned host buffers, device buffers, one non-default stream and timing events for each
    of the ``IN_FLIGHT`` batches ``submit`` may queue (results are read in order)."""

    def __init__(self, device: str = "cuda") -> None:
        require_cuda(device)
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device)
        self._events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True),
                         torch.cuda.Event()) for _ in range(IN_FLIGHT)]
        self._slot = 0
        self._bufs: dict[str, torch.Tensor] = {}

    def _buffer(self, key: str, shape: Sequence[int], dtype: torch.dtype,
                pinned: bool) -> torch.Tensor:
        """A view of ``shape`` into a reused buffer, regrown when a batch is larger."""
        torch = self._torch
        need = int(np.prod(shape))
        buf = self._bufs.get(key)
        if buf is None or buf.dtype != dtype or buf.numel() < need:
            buf = torch.empty(need, dtype=dtype, device="cpu" if pinned else self.device,
                              pin_memory=pinned)
            self._bufs[key] = buf
        return buf[:need].view(*shape)

    def run(self, batch: np.ndarray | torch.Tensor, call: ModelCall,
            out_shape: Sequence[int] | None = None,
            out_dtype: Any = np.float32) -> tuple[np.ndarray, float]:
        """(N, C, H, W) array or CUDA tensor -> (output as float32 array, pure seconds)."""
        return self._queue(batch, call, out_shape, out_dtype, self._slot).result()

    def submit(self, batch: np.ndarray | torch.Tensor, call: ModelCall,
               out_shape: Sequence[int] | None = None, out_dtype: Any = np.float32) -> Queued:
        """Queue ``run``'s work on the stream; :meth:`Queued.result` waits for it."""
        slot = self._slot
        self._slot = (slot + 1) % IN_FLIGHT
        return self._queue(batch, call, out_shape, out_dtype, slot)

    def _queue(self, batch: np.ndarray | torch.Tensor, call: ModelCall,
               out_shape: Sequence[int] | None, out_dtype: Any, slot: int) -> Queued:
        torch = self._torch
        start, end, done = events = self._events[slot]
        tag = str(slot or "")  # buffers of slot 0 keep the plain names
        done.synchronize()  # this slot's buffers are free again
        on_device = isinstance(batch, torch.Tensor) and batch.device.type == "cuda"
        h_in = None
        if not on_device:
            batch = np.ascontiguousarray(batch)
            in_dtype = torch.from_numpy(batch[:0]).dtype
            h_in = self._buffer(f"h_in{tag}", batch.shape, in_dtype, pinned=True)
            d_in = self._buffer(f"d_in{tag}", batch.shape, in_dtype, pinned=False)
            h_in.copy_(torch.from_numpy(batch))
        d_out = None
        if out_shape is not None:
            out_t = torch.from_numpy(np.empty(0, dtype=out_dtype)).dtype
            d_out = self._buffer(f"d_out{tag}", out_shape, out_t, pinned=False)
        with torch.cuda.stream(self.stream):
            if h_in is not None:
                d_in.copy_(h_in, non_blocking=True)
            else:  # prepared on the GPU on another stream, complete (its producer synced)
                assert isinstance(batch, torch.Tensor)
                batch.record_stream(self.stream)  # its memory is not reused before we ran
                d_in = batch.contiguous()
            start.record(self.stream)
            result = call(d_in, d_out, self.stream)
            end.record(self.stream)
            src = d_out if result is None else result
            if src is None:
                raise TypeError("the model call returned nothing and no out_shape was given")
            h_out = self._buffer(f"h_out{tag}", tuple(src.shape), src.dtype, pinned=True)
            h_out.copy_(src, non_blocking=True)
            done.record(self.stream)
        return Queued(h_out, events)

    def close(self) -> None:
        if self._bufs:
            self.stream.synchronize()
        self._bufs.clear()

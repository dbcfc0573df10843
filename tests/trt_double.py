"""A test double of the TensorRT 10/11 runtime API, strict about the contract the real one has.

The runner under test receives this module in place of ``tensorrt`` (``trt=trt_double``). The
double deserializes "engines" made by ``EngineSpec.to_bytes`` (anything else, or another
``__version__``, fails like a real version/GPU mismatch: ``None`` plus a logged error) and
computes real outputs: a linear classifier ``x.reshape(n, -1) @ W.T + b``.

Contract enforced in ``execute_async_v3`` (``ContractViolation``), as the real API documents:
- every input shape set with ``set_input_shape`` (within the profile) before execution;
- a non-zero address for every I/O tensor, pointing into a registered host buffer big enough
  for the tensor (the CPU stand-in for the CUDA path registers its buffers);
- a non-default stream handle (0, legacy 1 and per-thread 2 are refused);
- only existing tensor names; output shape derived from the input shape.

Typing: under ``TYPE_CHECKING`` the classes derive from the ``tensorrt`` stubs' classes and the
enums/Dims *are* the stubs' types, so mypy (run by tests/test_trt_runtime.py with
tensorrt-stubs) checks every method here against the real API's signatures.
"""

from __future__ import annotations

import ctypes
import enum
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

__version__ = "10.13.0.35"

if TYPE_CHECKING:
    import tensorrt as _stub
    from tensorrt import DataType, Dims, ILogger, TensorIOMode
    from typing_extensions import override

    _EngineBase = _stub.ICudaEngine
    _ContextBase = _stub.IExecutionContext
    _RuntimeBase = _stub.Runtime
else:
    _EngineBase = _ContextBase = _RuntimeBase = object

    def override(func: Any) -> Any:
        return func

    class TensorIOMode(enum.Enum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2

    class DataType(enum.Enum):
        FLOAT = 0
        HALF = 1
        INT8 = 2
        INT32 = 3

    class Dims(tuple):
        pass

    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3
            VERBOSE = 4

        def __init__(self) -> None:
            pass

        def log(self, severity: Any, msg: str) -> None:
            raise NotImplementedError


class Logger(ILogger):
    def __init__(self, min_severity: Any = None) -> None:
        ILogger.__init__(self)
        self.messages: list[str] = []

    def log(self, severity: ILogger.Severity, msg: str) -> None:
        self.messages.append(msg)


class ContractViolation(AssertionError):
    """The caller broke a rule of the TensorRT runtime API."""


_NP = {"float32": (np.float32, "FLOAT"), "float16": (np.float16, "HALF"),
       "int32": (np.int32, "INT32")}
_DEFAULT_STREAMS = {0, 1, 2}  # default, cudaStreamLegacy, cudaStreamPerThread

# (address, nbytes, CUDA tensor or None) of the buffers the double may touch: host memory is
# read through ctypes; a registered CUDA tensor (GPU test of the real CUDA path) through torch.
KNOWN_BUFFERS: list[tuple[int, int, Any]] = []


def register(ptr: int, nbytes: int, cuda_tensor: Any = None) -> None:
    KNOWN_BUFFERS.append((ptr, nbytes, cuda_tensor))


def unregister(ptr: int, nbytes: int, cuda_tensor: Any = None) -> None:
    KNOWN_BUFFERS.remove((ptr, nbytes, cuda_tensor))


def _buffer(name: str, ptr: int, nbytes: int) -> Any:
    """The registered CUDA tensor holding [ptr, ptr + nbytes), or None for host memory."""
    for start, size, tensor in KNOWN_BUFFERS:
        if start <= ptr and ptr + nbytes <= start + size:
            return tensor
    raise ContractViolation(f"address of {name!r} does not hold {nbytes} bytes of a buffer")


def _read(ptr: int, nbytes: int, tensor: Any, dtype: np.dtype, shape: tuple[int, ...]) -> Any:
    if tensor is None:
        return np.frombuffer(ctypes.string_at(ptr, nbytes), dtype=dtype).reshape(shape)
    offset = (ptr - tensor.data_ptr()) // tensor.element_size()
    # on the current (pipe) stream, so ordered after the pipe's async host-to-device copy
    return tensor.reshape(-1)[offset:offset + int(np.prod(shape))].cpu().numpy().reshape(shape)


def _write(ptr: int, tensor: Any, y: np.ndarray) -> None:
    if tensor is None:
        ctypes.memmove(ptr, y.ctypes.data, y.nbytes)
        return
    import torch

    offset = (ptr - tensor.data_ptr()) // tensor.element_size()
    tensor.reshape(-1)[offset:offset + y.size].copy_(torch.from_numpy(y.reshape(-1)))


@dataclass
class EngineSpec:
    """What the double's "engine" is: one linear classifier, its I/O and profile."""

    chw: tuple[int, int, int] = (3, 4, 4)
    num_classes: int = 10
    profile: tuple[int, int, int] | None = (1, 4, 8)  # batch min/opt/max; None: static batch
    static_batch: int = 1
    io_dtype: str = "float32"
    in_name: str = "input"
    out_name: str = "output"
    extra_inputs: int = 0  # > 0 makes a (wrong) multi-input engine
    version: str = __version__
    seed: int = 0

    def to_bytes(self) -> bytes:
        return b"TRT-DOUBLE\n" + json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> EngineSpec | None:
        if not data.startswith(b"TRT-DOUBLE\n"):
            return None
        raw = json.loads(data.split(b"\n", 1)[1])
        for key in ("chw", "profile"):
            raw[key] = tuple(raw[key]) if raw[key] is not None else None
        return cls(**raw)

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        features = int(np.prod(self.chw))
        w = rng.standard_normal((self.num_classes, features)).astype(np.float32) / features
        return w, rng.standard_normal(self.num_classes).astype(np.float32)

    def reference(self, batch: np.ndarray) -> np.ndarray:
        """The logits a correct runner must return for ``batch``."""
        w, b = self.weights()
        x = batch.astype(self.io_dtype).astype(np.float32)
        return (x.reshape(len(x), -1) @ w.T + b).astype(self.io_dtype).astype(np.float32)


class Runtime(_RuntimeBase):
    def __init__(self, logger: ILogger) -> None:
        self._logger = logger

    @override
    def deserialize_cuda_engine(  # type: ignore[override]  # stub omits the documented None
        self, serialized_engine: Any,
    ) -> ICudaEngine | None:
        spec = EngineSpec.from_bytes(bytes(serialized_engine))
        if spec is None or spec.version != __version__:
            found = spec.version if spec else "not a TensorRT plan"
            self._logger.log(ILogger.Severity.ERROR,
                            f"Serialization assertion failed: version {found} != {__version__}")
            return None
        return ICudaEngine(spec)


class ICudaEngine(_EngineBase):
    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.inputs = [spec.in_name] + [f"extra{i}" for i in range(spec.extra_inputs)]
        self.contexts: list[IExecutionContext] = []

    @override
    @property
    def num_io_tensors(self) -> int:
        return len(self.inputs) + 1

    @override
    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def _known(self, name: str) -> None:
        if name not in self.inputs and name != self.spec.out_name:
            raise ContractViolation(f"no tensor named {name!r}")

    @override
    def get_tensor_name(self, index: int) -> str:
        names = [*self.inputs, self.spec.out_name]
        if not 0 <= index < len(names):
            raise ContractViolation(f"tensor index {index} out of range")
        return names[index]

    @override
    def get_tensor_mode(self, name: str) -> TensorIOMode:
        self._known(name)
        return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

    @override
    def get_tensor_dtype(self, name: str) -> DataType:
        self._known(name)
        return cast("DataType", getattr(DataType, _NP[self.spec.io_dtype][1]))

    @override
    def get_tensor_shape(self, name: str) -> Dims:
        self._known(name)
        batch = -1 if self.spec.profile else self.spec.static_batch
        if name == self.spec.out_name:
            return Dims([batch, self.spec.num_classes])
        return Dims([batch, *self.spec.chw])

    @override
    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        self._known(name)
        if profile_index != 0 or name not in self.inputs or self.spec.profile is None:
            raise ContractViolation(f"no profile {profile_index} shape for {name!r}")
        return [Dims([n, *self.spec.chw]) for n in self.spec.profile]

    @override
    def create_execution_context(self, *args: Any, **kwargs: Any) -> IExecutionContext:
        context = IExecutionContext(self)
        self.contexts.append(context)
        return context


class IExecutionContext(_ContextBase):
    def __init__(self, engine: ICudaEngine) -> None:
        self.owner = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.executions: list[tuple[tuple[int, ...], int]] = []  # (input shape, stream)

    @override
    def set_input_shape(self, name: str, shape: Sequence[int] | Dims) -> bool:
        spec = self.owner.spec
        if name not in self.owner.inputs:
            raise ContractViolation(f"set_input_shape on {name!r}, which is not an input")
        shape = tuple(int(shape[i]) for i in range(len(shape)))
        lo, hi = (spec.profile[0], spec.profile[2]) if spec.profile else (spec.static_batch,) * 2
        if len(shape) != 4 or shape[1:] != spec.chw or not lo <= shape[0] <= hi:
            return False  # the real API refuses (returns False) shapes outside the profile
        self.shapes[name] = shape
        return True

    @override
    def get_tensor_shape(self, name: str) -> Dims:
        self.owner._known(name)
        if name in self.owner.inputs:
            if name in self.shapes:
                return Dims(list(self.shapes[name]))
            return self.owner.get_tensor_shape(name)
        inp = self.shapes.get(self.owner.spec.in_name)
        batch = inp[0] if inp else -1
        return Dims([batch, self.owner.spec.num_classes])

    @override
    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.owner._known(name)
        self.addresses[name] = int(memory)
        return True

    @override
    def execute_async_v3(self, stream_handle: int) -> bool:
        spec = self.owner.spec
        if not isinstance(stream_handle, int) or stream_handle in _DEFAULT_STREAMS:
            raise ContractViolation(f"execute_async_v3 on the default stream ({stream_handle!r})")
        for name in self.owner.inputs:
            if name not in self.shapes:
                raise ContractViolation(f"input shape of {name!r} not set before execution")
        for name in [*self.owner.inputs, spec.out_name]:
            if not self.addresses.get(name):
                raise ContractViolation(f"no address set for tensor {name!r}")
        dtype = np.dtype(_NP[spec.io_dtype][0])
        shape = self.shapes[spec.in_name]
        n_in = int(np.prod(shape)) * dtype.itemsize
        n_out = shape[0] * spec.num_classes * dtype.itemsize
        in_ptr, out_ptr = self.addresses[spec.in_name], self.addresses[spec.out_name]
        in_buf = _buffer(spec.in_name, in_ptr, n_in)
        out_buf = _buffer(spec.out_name, out_ptr, n_out)
        x = _read(in_ptr, n_in, in_buf, dtype, shape)
        _write(out_ptr, out_buf, np.ascontiguousarray(spec.reference(x).astype(dtype)))
        self.executions.append((shape, stream_handle))
        return True


class FakeStream:
    def __init__(self, handle: int) -> None:
        self.cuda_stream = handle


class CpuPipe:
    """CPU stand-in for ``CudaBatchPipe``: same ``run`` interface, host tensors as "device"."""

    def __init__(self, stream_handle: int = 0x5EED) -> None:
        self.stream = FakeStream(stream_handle)
        self.closed = False
        self.calls = 0

    def run(self, batch: np.ndarray, call: Any, out_shape: Sequence[int] | None = None,
            out_dtype: Any = np.float32) -> tuple[np.ndarray, float]:
        import torch

        d_in = torch.from_numpy(np.ascontiguousarray(batch).copy())
        dtype = torch.from_numpy(np.empty(0, dtype=out_dtype)).dtype
        d_out = torch.full(tuple(out_shape or ()), float("nan"), dtype=dtype)
        bufs = [(t.data_ptr(), t.numel() * t.element_size()) for t in (d_in, d_out)]
        for buf in bufs:
            register(*buf)
        try:
            start = time.perf_counter()
            result = call(d_in, d_out, self.stream)
            pure = time.perf_counter() - start
        finally:
            for buf in bufs:
                unregister(*buf)
        self.calls += 1
        out = d_out if result is None else result
        return out.numpy().astype(np.float32), pure

    def close(self) -> None:
        self.closed = True


def engine_meta(backend: str, version: str, chw: tuple[int, int, int], num_classes: int,
                profile: tuple[int, int, int] | None, model: dict[str, Any] | None = None,
                ) -> dict[str, Any]:
    """Sidecar metadata in the schema pochi convert writes (``profile``: min/opt/max batch)."""
    prof = None if profile is None else {
        k: [n, *chw] for k, n in zip(("min", "opt", "max"), profile)}
    return {
        "format": "pochitrain-engine-v1", "backend": backend, "backend_version": version,
        "precision": "fp32", "pattern": 1 if profile else 3,
        "input": {"name": "input", "dtype": "float32", "onnx_shape": ["batch_size", *chw],
                  "profile": prof},
        "output": {"name": "output", "dtype": "float32",
                   "onnx_shape": ["batch_size", num_classes]},
        "model": model, "source_onnx": {"path": "/models/best.onnx", "sha256": "0" * 64},
        "build": {}, "calibration": None, "gpu": None, "created": "2026-11-28T00:00:00+00:00",
        "pochitrain_version": "2.0.0",
    }


def double_engine(folder: Path, spec: EngineSpec, model: dict[str, Any] | None = None,
                  name: str = "model.engine") -> Path:
    """An engine file (plus sidecar) holding ``spec``: what this double deserializes."""
    from pochitrain.tensorrt.engine_file import write_engine

    path = folder / name
    meta = engine_meta("tensorrt", spec.version, spec.chw, spec.num_classes, spec.profile, model)
    write_engine(path, spec.to_bytes(), meta, overwrite=False)
    return path

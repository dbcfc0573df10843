"""Run a TensorRT (10.x / 11.x) or TensorRT-RTX (1.x) engine: the ``tensorrt`` Runner.

Loading order, so that each failure gets its own clear error (testable without a GPU): engine
file -> sidecar (``<engine>.json``) -> CUDA device -> backend import -> deserialization -> one
input / one output -> profile and batch size. Each batch runs at its real size (no padding)
through ``execute_async_v3`` on the shared CUDA path. ``trt`` and ``pipe`` can be injected: the
tests use a test double of the TensorRT API and a CPU stand-in for the pipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pochitrain.errors import BackendMissingError, EngineLoadError, ModelFileError, UsageError
from pochitrain.inference.runner import RunnerInput
from pochitrain.tensorrt.logger import make_logger

if TYPE_CHECKING:
    import tensorrt
    import torch

    from pochitrain.inference.cuda_path import BatchPipe
    from pochitrain.tensorrt.backend import Backend


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: Any  # numpy dtype of the engine's I/O tensor
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]


def _dims(dims: Any) -> tuple[int, ...]:
    # Dims behaves like a tuple but the stubs declare no __iter__: index it.
    return tuple(int(dims[i]) for i in range(len(dims)))


def _np_dtype(trt: Any, dtype: Any, name: str) -> Any:
    for trt_type, np_type in ((trt.DataType.FLOAT, np.float32), (trt.DataType.HALF, np.float16)):
        if dtype == trt_type:
            return np.dtype(np_type)
    raise EngineLoadError(
        "エンジンのテンソルのデータ型に対応していません\n"
        f"Engine tensor {name!r} has data type {dtype}; pochitrain runs engines with float32 or "
        "float16 input and output.",
        "Convert the model with pochi convert (it keeps float I/O for FP16 and INT8 engines).",
    )


def _load_backend(recorded: str) -> Backend:
    """The TensorRT flavour recorded in the engine metadata."""
    from pochitrain.tensorrt.backend import load_backend

    try:
        return load_backend(recorded)
    except BackendMissingError as exc:
        raise BackendMissingError(
            "エンジンを作成したバックエンドがインストールされていません\n"
            f"This engine was built with {recorded}, which is not installed here.\n{exc.message}",
            exc.remedy,
        ) from exc


class TensorRTRunner:
    name = "tensorrt"

    def __init__(self, engine: tensorrt.ICudaEngine, inp: TensorSpec, out: TensorSpec,
                 pipe: BatchPipe, info: dict[str, str], keep: tuple[Any, ...] = ()) -> None:
        context = engine.create_execution_context()
        if context is None:
            raise EngineLoadError("TensorRT の実行コンテキストを作成できませんでした\n"
                                  "TensorRT could not create an execution context (GPU memory?).",
                                  "Close other GPU programs or use a smaller --batch-size.")
        self.engine = engine
        self.context: tensorrt.IExecutionContext = context
        self.inp, self.out, self.pipe, self.info = inp, out, pipe, info
        self._keep = keep  # runtime + logger must outlive the engine
        self.default_batch_size = inp.opt_shape[0]

    @property
    def on_cuda(self) -> bool:
        """True on the real CUDA path (the GPU input pipeline can feed it device tensors)."""
        from pochitrain.inference.cuda_path import CudaBatchPipe

        return isinstance(self.pipe, CudaBatchPipe)

    @property
    def input(self) -> RunnerInput:
        lo, hi = self.inp.min_shape[0], self.inp.max_shape[0]
        h, w = self.inp.opt_shape[2], self.inp.opt_shape[3]
        return RunnerInput(lo if lo == hi else None, (int(h), int(w)),
                           "cuda" if self.on_cuda else "cpu", int(self.default_batch_size))

    @property
    def precision(self) -> str | None:
        """The sidecar's precision; None (the original's null) for an engine without one."""
        precision = self.info.get("precision")
        return None if precision in (None, "", "unknown") else str(precision)

    def check_batch_size(self, batch_size: int) -> None:
        lo, hi = self.inp.min_shape[0], self.inp.max_shape[0]
        if not lo <= batch_size <= hi:
            allowed = str(lo) if lo == hi else f"{lo} to {hi}"
            raise UsageError(
                "バッチサイズがエンジンの最適化プロファイルの範囲外です\n"
                f"Batch size {batch_size} is outside the engine's optimization profile "
                f"(allowed: {allowed}).",
                f"Use --batch-size {self.default_batch_size} (the profile's opt), or rebuild the "
                "engine for it: pochi convert MODEL.onnx --batch-size N (or --batch MIN OPT MAX).",
            )

    def run(self, batch: np.ndarray | torch.Tensor) -> tuple[np.ndarray, float]:
        """(N, C, H, W) float32 array, or CUDA tensor from the GPU input pipeline ->
        ((N, K) float32 logits, pure seconds)."""
        shape = tuple(int(d) for d in batch.shape)
        want = self.inp.opt_shape[1:]
        if shape[1:] != want:
            raise UsageError("バッチの形状がエンジンの入力に合いません\n"
                             f"Batch shape {shape} does not fit the engine input "
                             f"(N, {', '.join(map(str, want))}).",
                             "Use the preprocessing the model was converted with.")
        if shape[0] < self.inp.min_shape[0]:
            raise UsageError(
                "バッチの画像数がエンジンのプロファイルの最小値を下回っています\n"
                f"A batch of {shape[0]} images is below the engine profile's minimum "
                f"({self.inp.min_shape[0]}); the last batch of a folder is often smaller.",
                "Rebuild the engine with a profile whose min batch is 1: "
                "pochi convert MODEL.onnx --batch 1 OPT MAX.",
            )
        self.check_batch_size(shape[0])
        context, inp, out = self.context, self.inp, self.out
        if not context.set_input_shape(inp.name, shape):
            raise EngineLoadError("TensorRT がこの入力の形状を受け付けませんでした\n"
                                  f"TensorRT refused input shape {shape} for {inp.name!r}.",
                                  "Use a batch size within the engine's profile.")
        out_shape = _dims(context.get_tensor_shape(out.name))
        if min(out_shape) < 0:
            raise EngineLoadError("TensorRT が出力の形状を決められませんでした\n"
                                  f"TensorRT could not infer the output shape {out_shape}.",
                                  "Re-run `pochi convert`; the engine's shapes are inconsistent.")

        def execute(d_in: torch.Tensor, d_out: torch.Tensor, stream: Any) -> None:
            context.set_tensor_address(inp.name, d_in.data_ptr())
            context.set_tensor_address(out.name, d_out.data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise EngineLoadError("TensorRT でエンジンを実行できませんでした\n"
                                      "TensorRT failed to run the engine on this batch.",
                                      "Re-run `pochi convert` on this machine and try again.")

        data: np.ndarray | torch.Tensor
        if isinstance(batch, np.ndarray):
            data = np.ascontiguousarray(batch, dtype=inp.dtype)
        else:  # already on the GPU: only the engine's input type is matched there
            data = batch.half() if inp.dtype == np.float16 else batch.float()
        return self.pipe.run(data, execute, out_shape=out_shape, out_dtype=out.dtype)

    def describe(self) -> dict[str, str]:
        return dict(self.info)

    def close(self) -> None:
        self.pipe.close()


class OpenedEngine(NamedTuple):
    runner: TensorRTRunner
    meta: dict[str, Any]  # the sidecar ``<engine>.json`` (or what a bare engine tells)


def _io_specs(trt: Any, engine: tensorrt.ICudaEngine,
              path: Path) -> tuple[TensorSpec, TensorSpec]:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelFileError(
            "エンジンの入出力の数が画像分類モデルと合いません\n"
            f"{path} has {len(inputs)} input(s) and {len(outputs)} output(s); an image classifier "
            "engine has exactly one image input and one logits output.",
            "Convert a single-input, single-output classifier ONNX with pochi convert.",
        )
    i_name, o_name = inputs[0], outputs[0]
    shape = _dims(engine.get_tensor_shape(i_name))
    if len(shape) != 4:
        raise ModelFileError("エンジンの入力の形状が (N, 3, H, W) ではありません\n"
                             f"{path}: input {i_name!r} has shape {shape}; expected (N, 3, H, W).",
                             "Convert an NCHW image classifier.")
    if min(shape) < 0:
        lo, opt, hi = (_dims(d) for d in engine.get_tensor_profile_shape(i_name, 0))
    else:  # fully static engine (pattern 3): no profile to consult
        lo = opt = hi = shape
    inp = TensorSpec(i_name, _np_dtype(trt, engine.get_tensor_dtype(i_name), i_name), lo, opt, hi)
    o_dtype = _np_dtype(trt, engine.get_tensor_dtype(o_name), o_name)
    o_shape = _dims(engine.get_tensor_shape(o_name))
    return inp, TensorSpec(o_name, o_dtype, o_shape, o_shape, o_shape)


def _read_sidecar(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFileError(
            f"エンジンファイルが見つかりません: {path}\nEngine file not found: {path}",
            "Check the path, or build the engine first: pochi convert MODEL.onnx",
        )
    from pochitrain.tensorrt.engine_file import (
        bare_engine_metadata,
        read_engine_metadata,
        sidecar_path,
    )

    return (read_engine_metadata(path) if sidecar_path(path).exists()
            else bare_engine_metadata(path))  # an engine built elsewhere: config supplies meta


def _deserialize(runtime: tensorrt.Runtime, logger: Any,
                 path: Path) -> tensorrt.ICudaEngine | None:
    try:
        return runtime.deserialize_cuda_engine(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - the bindings raise for some malformed files
        logger.errors.append(f"{type(exc).__name__}: {exc}")
        return None


def _load_error(path: Path, meta: dict[str, Any], backend: str, installed: str, gpu: str,
                logger: Any) -> EngineLoadError:
    """Why the engine does not load here: where it was built, what is installed."""
    recorded = f"{meta.get('backend', '?')} {meta.get('backend_version', '?')}"
    built = meta.get("gpu")
    if built and isinstance(built, dict):
        built = (f"{built.get('name', '?')} (compute capability "
                 f"{built.get('compute_capability', '?')})")
    built_on = f", GPU {built}" if built else ""
    detail = f"\nTensorRT: {logger.errors[-1]}" if logger.errors else ""
    source = (meta.get("source_onnx") or {}).get("path", "the original .onnx")
    remedy = "Re-run `pochi convert` on this machine to rebuild the engine"
    if backend == "tensorrt_rtx" and "(sm_90)" in gpu:
        detail += "\nTensorRT-RTX does not run on compute capability 9.0 (H100/H200)."
        remedy = ('Install TensorRT (pip install "pochitrain[tensorrt]") and rebuild with '
                  "`pochi convert --backend tensorrt`")
    return EngineLoadError(
        f"エンジンを読み込めません: {path}\nThe engine cannot be deserialized here. It was "
        f"built with {recorded}{built_on}; installed: {backend} {installed}, GPU {gpu}. "
        "Engines only load with the TensorRT version and GPU they were built for."
        + detail,
        f"{remedy} (source ONNX: {source}).",
    )


def open_trt_runner(engine_path: Path | str, batch_size: int | None = None, *,
                    trt: Any = None, pipe: BatchPipe | None = None) -> OpenedEngine:
    """(runner, the sidecar ``<engine>.json`` as a dict); ``batch_size`` must lie within the
    profile; ``trt`` / ``pipe`` replace the backend module and the CUDA path (tests)."""
    path = Path(engine_path)
    meta = _read_sidecar(path)
    gpu = "injected pipe"
    if pipe is None:
        from pochitrain.inference.cuda_path import require_cuda

        gpu = require_cuda()
    backend = str(meta["backend"])
    if trt is None:
        loaded = _load_backend(backend)
        backend, trt = loaded.name, loaded.module
    installed = str(getattr(trt, "__version__", "unknown"))
    logger = make_logger(trt)
    runtime: tensorrt.Runtime = trt.Runtime(logger)
    engine = _deserialize(runtime, logger, path)
    if engine is None:
        raise _load_error(path, meta, backend, installed, gpu, logger)
    inp, out = _io_specs(trt, engine, path)
    if pipe is None:
        from pochitrain.inference.cuda_path import CudaBatchPipe

        pipe = CudaBatchPipe()
    info = {"backend": f"{backend} {installed}",
            "precision": str(meta.get("precision", "unknown")),
            "engine_io": f"{inp.dtype.name} -> {out.dtype.name}",
            "batch_profile": f"min {inp.min_shape[0]} / opt {inp.opt_shape[0]} / "
                             f"max {inp.max_shape[0]}",
            "gpu": gpu}
    runner = TensorRTRunner(engine, inp, out, pipe, info, keep=(runtime, logger))
    if batch_size is not None:
        runner.check_batch_size(batch_size)
    return OpenedEngine(runner, meta)

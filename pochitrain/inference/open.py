"""Open any model artefact (.pth, .onnx, .engine) as a Runner with its resolved metadata.

``pochi infer``, ``Predictor`` and ``pochi serve`` all open models here, so a model file
means the same runtime, preprocessing and class names wherever it is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pochitrain.errors import ModelFileError, ShapeError
from pochitrain.meta import ModelMeta

DEFAULT_BATCH = 32  # images per model call when the model does not fix it
RUNTIMES = {".pth": "pytorch", ".pt": "pytorch", ".onnx": "onnx", ".engine": "tensorrt",
            ".plan": "tensorrt", ".trt": "tensorrt"}


@dataclass
class OpenModel:
    path: Path
    runtime: str  # "pytorch" | "onnx" | "tensorrt"
    runner: Any  # a pochitrain.inference.runner.Runner
    meta: ModelMeta
    preprocess_from: str
    extra: dict[str, Any] = field(default_factory=dict)  # onnx_info / engine_meta

    @property
    def fixed_batch(self) -> int | None:
        """The only batch size the model takes (fixed ONNX batch, engine profile), or None."""
        onnx_info = self.extra.get("onnx_info")
        if onnx_info is not None:
            return getattr(self.runner, "fixed_batch", None)
        if self.runtime == "tensorrt":
            lo, hi = self.runner.inp.min_shape[0], self.runner.inp.max_shape[0]
            return int(lo) if lo == hi else None
        return None

    def default_batch_size(self) -> int:
        """The engine profile's opt batch (TensorRT), the fixed batch of a static ONNX, else
        ``DEFAULT_BATCH``: throughput first; ``--batch-size 1`` measures per-image latency."""
        if self.runtime == "tensorrt":
            return int(self.runner.default_batch_size)
        return self.fixed_batch or DEFAULT_BATCH

    def close(self) -> None:
        self.runner.close()


def runtime_for(model_path: Path) -> str:
    runtime = RUNTIMES.get(model_path.suffix.lower())
    if runtime is None:
        raise ModelFileError(
            f"Cannot tell the model type of {model_path} from its extension.",
            "Pass a .pth checkpoint, an .onnx model or a TensorRT .engine file.",
        )
    return runtime


def _open_runner(runtime: str, model_path: Path, device: str, providers: list[str] | None,
                 batch_size: int | None, torch_options: Any, config: Path | str | None = None,
                 ) -> tuple[Any, ModelMeta | None, dict[str, Any]]:
    if runtime == "pytorch":
        from pochitrain.checkpoint import load_model
        from pochitrain.config import resolve_device
        from pochitrain.inference.torch_runner import TorchRunner

        resolved = resolve_device(device, flag="--device")
        if device == "auto" and resolved == "cpu":
            from pochitrain.console import info

            info("CUDA が使えないため CPU で推論します / No CUDA GPU here: running PyTorch on "
                 "the CPU.")
        model, meta = load_model(model_path, config=config)  # config: original checkpoints
        return TorchRunner(model, resolved, torch_options), meta, {}
    if runtime == "onnx":
        from pochitrain.inference.onnx_runner import open_onnx_runner

        runner, info_ = open_onnx_runner(model_path, providers)
        return runner, info_.meta, {"onnx_info": info_}
    from pochitrain.tensorrt.runtime import open_trt_runner

    trt_runner, engine_meta = open_trt_runner(model_path, batch_size)
    recorded = engine_meta.get("model")
    trt_meta = ModelMeta.from_dict(recorded, where=str(model_path)) if recorded else None
    return trt_runner, trt_meta, {"engine_meta": engine_meta}


def model_input_hw(runtime: str, extra: dict[str, Any]) -> tuple[int, int] | None:
    """The H, W the model file itself is fixed to (None: any size)."""
    if runtime == "onnx":
        return extra["onnx_info"].fixed_hw
    if runtime == "tensorrt":
        inp = extra["engine_meta"].get("input", {})
        shape = (inp.get("profile") or {}).get("opt") or inp.get("static_shape")
        return (int(shape[2]), int(shape[3])) if shape else None
    return None


def check_input_size(runtime: str, extra: dict[str, Any], meta: ModelMeta) -> None:
    want = tuple(meta.preprocess.input_size)
    fixed = model_input_hw(runtime, extra)
    if fixed is not None and tuple(fixed) != want:
        raise ShapeError(
            f"The model expects {fixed[0]}x{fixed[1]} images but the preprocessing produces "
            f"{want[0]}x{want[1]}.",
            "Use the config the model was trained with (-c), or re-export/convert the model "
            f"with --input-size {want[0]} {want[1]}.",
        )


def open_model(model_path: Path | str, *, config: Path | str | None = None,
               device: str = "auto", providers: list[str] | None = None,
               batch_size: int | None = None, torch_options: Any = None,
               expect_runtime: str | None = None) -> OpenModel:
    """Runner + resolved metadata for ``model_path``; the runtime comes from the extension.

    ``expect_runtime`` ("onnx" for infer-onnx, ...) refuses other file types.
    """
    from pochitrain.resolve import resolve_meta

    model_path = Path(model_path)
    runtime = runtime_for(model_path)
    if expect_runtime is not None and runtime != expect_runtime:
        raise ModelFileError(
            f"{model_path} is not a {expect_runtime} model (it looks like {runtime}).",
            "Use 'pochi infer MODEL' to pick the runtime from the file type.",
        )
    if not model_path.exists() and runtime != "tensorrt":  # infer-trt owns its own message
        raise ModelFileError(f"Model file not found: {model_path}", "Check the path.")
    runner, model_meta, extra = _open_runner(runtime, model_path, device, providers,
                                             batch_size, torch_options, config)
    try:
        resolved = resolve_meta(model_path, model_meta, config)
        check_input_size(runtime, extra, resolved.meta)
    except BaseException:
        runner.close()
        raise
    return OpenModel(model_path, runtime, runner, resolved.meta, resolved.preprocess_from, extra)

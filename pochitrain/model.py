"""The model facade: any ``.pth``, ``.onnx`` or ``.engine`` file opened as one ``Model``.

``open_model`` picks the backend from one table keyed by the file's suffix, resolves the
model's context once (``resolve.resolve_context``) and checks that the model file and the
preprocessing agree on the image size. ``pochi infer``, ``Predictor`` and ``pochi serve`` open
models here only, so a model file means the same thing wherever it is used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pochitrain.cuda_env import prepare_cuda_env
from pochitrain.errors import ModelFileError, ShapeError, UsageError
from pochitrain.meta import ModelMeta
from pochitrain.resolve import ModelContext, RunConfig, resolve_context

if TYPE_CHECKING:
    import torch

    from pochitrain.gpu_input import GpuBatches
    from pochitrain.inference.runner import Runner
    from pochitrain.inference.torch_runner import TorchOptions
    from pochitrain.preprocess import Preprocess

DEFAULT_BATCH = 32  # images per model call when the model does not fix it


@dataclass(frozen=True)
class OpenRequest:
    """What the caller asks of the runner (each backend reads the parts it uses)."""

    config: RunConfig
    device: str = "auto"  # PyTorch
    providers: list[str] | None = None  # ONNX Runtime
    batch_size: int | None = None  # TensorRT: checked against the engine's profile
    torch_options: TorchOptions | None = None


Opened = tuple["Runner", ModelMeta | None]  # the runner, the metadata the file carries


def _open_torch(path: Path, request: OpenRequest) -> Opened:
    from pochitrain.checkpoint import load_model
    from pochitrain.config import resolve_device
    from pochitrain.inference.torch_runner import TorchRunner

    device = resolve_device(request.device, flag="--device")
    if request.device == "auto" and device == "cpu":
        from pochitrain.console import info

        info("CUDA が使えないため CPU で推論します / No CUDA GPU here: running PyTorch on "
             "the CPU.")
    run_config = request.config
    config = run_config.path if run_config.given else None
    # the original's checkpoints take their metadata from a config: the one this model's
    # context reads (executed once) when it is the same file
    model, meta = load_model(path, config=config, settings_of=run_config.settings_for)
    return TorchRunner(model, device, request.torch_options), meta


def _open_onnx(path: Path, request: OpenRequest) -> Opened:
    from pochitrain.inference.onnx_runner import open_onnx_runner

    runner, onnx_info = open_onnx_runner(path, request.providers)
    return runner, onnx_info.meta


def _open_tensorrt(path: Path, request: OpenRequest) -> Opened:
    from pochitrain.inference.trt_runner import open_trt_runner

    runner, engine_meta = open_trt_runner(path, request.batch_size)
    return runner, _model_meta(engine_meta, path)


def _model_meta(engine_meta: dict[str, Any], path: Path) -> ModelMeta | None:
    """The model's metadata that an engine's sidecar recorded, if any."""
    recorded = engine_meta.get("model")
    return ModelMeta.from_dict(recorded, where=str(path)) if recorded else None


def _onnx_meta(path: Path) -> ModelMeta | None:
    from pochitrain.onnx.inspect import read_onnx

    return read_onnx(path)[0].meta


def _engine_meta(path: Path) -> ModelMeta | None:
    from pochitrain.tensorrt.engine_file import read_engine_metadata, sidecar_path

    return _model_meta(read_engine_metadata(path), path) if sidecar_path(path).is_file() else None


def _torch_on_gpu(device: str, providers: list[str] | None) -> bool:
    from pochitrain.config import resolve_device

    return resolve_device(device, flag="--device") != "cpu"


def _onnx_on_gpu(device: str, providers: list[str] | None) -> bool:
    return any(p.lower().startswith(("cuda", "tensorrt")) for p in providers or ())


@dataclass(frozen=True)
class Backend:
    runtime: str  # "pytorch" | "onnx" | "tensorrt": result file prefix, summaries
    open: Callable[[Path, OpenRequest], Opened]
    # whether the model runs on a GPU, given --device (PyTorch) and --providers (ONNX)
    on_gpu: Callable[[str, list[str] | None], bool]
    # the metadata the file carries, read without opening a runtime; None for a checkpoint,
    # which is itself the PyTorch model (its weights have gradients)
    read_meta: Callable[[Path], ModelMeta | None] | None = None
    says_not_found: bool = False  # the backend words a missing file itself (infer-trt)
    gpu_only: bool = False  # runs on a CUDA GPU or not at all
    # takes --device / --precision / --channels-last / --cuda-graph
    torch_options: bool = False
    takes_providers: bool = False  # takes --providers
    writes_model_info: bool = False  # the original's model_info.json beside the results


_TORCH = Backend("pytorch", _open_torch, _torch_on_gpu, torch_options=True,
                 writes_model_info=True)
_ONNX = Backend("onnx", _open_onnx, _onnx_on_gpu, _onnx_meta, takes_providers=True)
_TENSORRT = Backend("tensorrt", _open_tensorrt, lambda device, providers: True, _engine_meta,
                    says_not_found=True, gpu_only=True)
BACKENDS: dict[str, Backend] = {".pth": _TORCH, ".pt": _TORCH, ".onnx": _ONNX,
                                ".engine": _TENSORRT, ".plan": _TENSORRT, ".trt": _TENSORRT}


def backend_for(model_path: Path | str) -> Backend:
    """The backend of a model file, from its suffix; ModelFileError for any other file."""
    backend = BACKENDS.get(Path(model_path).suffix.lower())
    if backend is None:
        raise ModelFileError(
            "拡張子からモデルの種類を判断できません\n"
            f"Cannot tell the model type of {model_path} from its extension.",
            "Pass a .pth checkpoint, an .onnx model or a TensorRT .engine file.",
        )
    return backend


@dataclass
class InputPipeline:
    """Where the batches of a pass come from: ``batches`` (the GPU input pipeline) or None
    (the CPU path: PIL in decode threads). ``describe`` is asked after the run, so that
    nvJPEG's start-up probe, which it waits for, overlaps the first batches."""

    batches: GpuBatches | None
    describe: Callable[[], str]


@dataclass(eq=False)
class Model:
    """One opened model file: its runner, its context, and how batches reach it."""

    path: Path
    backend: Backend
    runner: Runner
    context: ModelContext

    @property
    def runtime(self) -> str:
        return self.backend.runtime

    @property
    def meta(self) -> ModelMeta:
        return self.context.meta

    @property
    def preprocess(self) -> Preprocess:
        return self.context.meta.preprocess

    @property
    def class_names(self) -> list[str]:
        return list(self.context.meta.class_names)

    @property
    def fixed_batch(self) -> int | None:
        """The only batch size the model takes (static ONNX, engine profile), or None."""
        return self.runner.input.fixed_batch

    @property
    def device(self) -> str:
        """Where the model's input batches live: "cpu", "cuda" or "cuda:N"."""
        return self.runner.input.device

    @property
    def precision(self) -> str | None:
        return self.runner.precision

    def default_batch_size(self) -> int:
        """The engine profile's opt batch, the fixed batch of a static ONNX, else
        ``DEFAULT_BATCH``: throughput first; ``--batch-size 1`` measures per-image latency."""
        spec = self.runner.input
        return spec.default_batch or spec.fixed_batch or DEFAULT_BATCH

    def probabilities(self, batch: np.ndarray | torch.Tensor,
                      chunk: int = DEFAULT_BATCH) -> np.ndarray:
        """(N, 3, H, W) float32 images (NumPy, or a device tensor from the GPU input
        pipeline) -> (N, classes) softmax, ``chunk`` images per model call; a fixed-batch
        model gets padded chunks of its batch."""
        from pochitrain.batching import run_chunked, softmax

        if len(batch) == 0:
            return np.zeros((0, len(self.class_names)))
        logits = run_chunked(lambda part: self.runner.run(part)[0], batch, chunk,
                             self.fixed_batch)
        return softmax(logits)

    def input_pipeline(self, pipeline: str = "auto", **gpu_options: Any) -> InputPipeline:
        """``--pipeline auto|cpu|gpu``, the same for every runtime and every verb: on a CUDA
        device the GPU input pipeline (nvJPEG decode, resize and normalize on the GPU) feeds
        PyTorch and TensorRT on the shared CUDA path and ONNX Runtime through IOBinding."""
        from pochitrain.gpu_input import GpuBatches, resolve_pipeline

        choice, why = resolve_pipeline(pipeline, self.device, self.preprocess)
        if choice == "cpu":
            return InputPipeline(None, lambda: f"cpu (PIL, decode threads; {why})")
        source = GpuBatches(self.preprocess, self.device, **gpu_options)
        return InputPipeline(source, source.describe)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Model:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_model_file(model_path: Path | str) -> Backend:
    """The backend of ``model_path``; ModelFileError when its type is unknown or the file is
    missing. Cheap: commands call it before importing their runtime."""
    model_path = Path(model_path)
    backend = backend_for(model_path)
    if not model_path.exists() and not backend.says_not_found:
        raise ModelFileError("モデルファイルが見つかりません\n"
                             f"Model file not found: {model_path}", "Check the path.")
    return backend


def check_input_size(fixed_hw: tuple[int, int] | None, meta: ModelMeta) -> None:
    """ShapeError when the model file is built for another H x W than its preprocessing."""
    want = tuple(meta.preprocess.input_size)
    if fixed_hw is not None and tuple(fixed_hw) != want:
        raise ShapeError(
            "モデルの入力サイズと前処理の出力サイズが一致しません\n"
            f"The model expects {fixed_hw[0]}x{fixed_hw[1]} images but the preprocessing "
            f"produces {want[0]}x{want[1]}.",
            "Use the config the model was trained with (-c), or re-export/convert the model "
            f"with --input-size {want[0]} {want[1]}.",
        )


def torch_options(model_path: Path | str, precision: str = "fp32", channels_last: bool = False,
                  cuda_graph: bool = False) -> TorchOptions | None:
    """The PyTorch runner's options; UsageError when they are asked of another runtime."""
    backend = backend_for(model_path)
    if backend.torch_options:
        from pochitrain.inference.torch_runner import TorchOptions

        return TorchOptions(precision, channels_last, cuda_graph)
    if precision != "fp32" or channels_last or cuda_graph:
        raise UsageError("このオプションは PyTorch (.pth) のモデルでのみ使えます\n"
                         "--precision, --channels-last and --cuda-graph are "
                         f"PyTorch (.pth) options; {Path(model_path).name} runs on "
                         f"{backend.runtime}.",
                         "Drop them (ONNX/TensorRT precision is chosen at export/convert time).")
    return None


def open_model(model_path: Path | str, *, config: Path | str | None = None,
               device: str = "auto", providers: list[str] | None = None,
               batch_size: int | None = None, torch_options: TorchOptions | None = None,
               expect_runtime: str | None = None) -> Model:
    """The ``Model`` of ``model_path``. ``config``: ``-c`` (else the run's ``config.py``
    beside the model); ``expect_runtime`` ("onnx" for infer-onnx, ...) refuses other files."""
    model_path = Path(model_path)
    backend = backend_for(model_path)
    if expect_runtime is not None and backend.runtime != expect_runtime:
        raise ModelFileError(
            "モデルファイルの種類が違います\n"
            f"{model_path} is not a {expect_runtime} model (it looks like {backend.runtime}).",
            "Use 'pochi infer MODEL' to pick the runtime from the file type.",
        )
    check_model_file(model_path)
    prepare_cuda_env()  # the Python API's start
    request = OpenRequest(RunConfig.for_model(model_path, config), device, providers,
                          batch_size, torch_options)
    runner, file_meta = backend.open(model_path, request)
    try:
        context = resolve_context(model_path, file_meta, request.config)
        check_input_size(runner.input.fixed_hw, context.meta)
    except BaseException:
        runner.close()
        raise
    return Model(model_path, backend, runner, context)

"""`pochi infer` / `infer-onnx` / `infer-trt`: one function, the runtime picked by file type.

Metadata comes from the model file (checkpoint dict, ONNX metadata_props, engine sidecar).
A config (``-c``, or found beside the run) is the fallback for preprocessing, and its run's
``run.json`` or ``train_data_root`` for class names: never the folder being inferred.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pochitrain.data import check_classes, remap_labels, scan_image_folder
from pochitrain.errors import ConfigError, DataError, ModelFileError, PochiError, ShapeError
from pochitrain.inference.loop import InferenceResult, run_inference
from pochitrain.meta import ModelMeta
from pochitrain.workspace import new_run_dir

RUNTIMES = {".pth": "pytorch", ".pt": "pytorch", ".onnx": "onnx", ".engine": "tensorrt",
            ".plan": "tensorrt", ".trt": "tensorrt"}


@dataclass
class InferOutcome:
    out_dir: Path
    files: list[Path]
    result: InferenceResult


def runtime_for(model_path: Path) -> str:
    runtime = RUNTIMES.get(model_path.suffix.lower())
    if runtime is None:
        raise ModelFileError(
            f"Cannot tell the model type of {model_path} from its extension.",
            "Pass a .pth checkpoint, an .onnx model or a TensorRT .engine file.",
        )
    return runtime


def run_folder_of(model_path: Path) -> Path:
    """work_dirs/X/models/best.pth -> work_dirs/X; anything else -> the model's folder."""
    parent = model_path.resolve().parent
    return parent.parent if parent.name == "models" else parent


def _config_fallback(model_path: Path, config: Path | None) -> tuple[Any | None, Path | None]:
    from pochitrain.config import find_config_near, load_config

    path = config or find_config_near(model_path)
    if path is None:
        return None, None
    return load_config(path), Path(path)


def _class_names_from_config(settings: Any, config_path: Path) -> list[str]:
    run_json = config_path.parent / "run.json"
    if run_json.is_file():
        try:
            names = json.loads(run_json.read_text(encoding="utf-8")).get("class_names")
            if names:
                return [str(n) for n in names]
        except (OSError, json.JSONDecodeError):
            pass
    names = getattr(settings, "class_names", None)
    if names:
        return [str(n) for n in names]
    train_root = getattr(settings, "train_data_root", None)
    if train_root:
        return scan_image_folder(train_root, "training data folder").classes
    raise ConfigError(
        f"Cannot find the class names for this model: no metadata in the model file, no "
        f"run.json beside {config_path} and no train_data_root in it.",
        "Use a model exported by pochitrain, or set train_data_root in the config.",
    )


def resolve_meta(model_meta: ModelMeta | None, model_path: Path,
                 config: Path | None) -> ModelMeta:
    """The model's own metadata; ``-c`` overrides its preprocessing; without metadata, the
    config (given or auto-detected) supplies preprocessing and class names."""
    if model_meta is not None and config is None:
        return model_meta
    settings, config_path = _config_fallback(model_path, config)
    if settings is None or config_path is None:
        raise ConfigError(
            f"{model_path} carries no pochitrain metadata (class names, preprocessing) and no "
            "config.py was found beside it.",
            "Pass -c/--config-path pointing at the training config (with val_transform).",
        )
    from pochitrain.config import preprocess_from_settings

    preprocess = preprocess_from_settings(settings)
    if model_meta is not None:
        return ModelMeta(model_meta.class_names, preprocess, model_meta.model_name,
                         model_meta.source)
    names = _class_names_from_config(settings, config_path)
    return ModelMeta(names, preprocess, model_name=str(getattr(settings, "model_name", "?")))


def _default_data(model_path: Path) -> Path:
    from pochitrain.config import find_val_data

    root = find_val_data(model_path)
    if root is None:
        raise DataError("No data folder given and none found in the run's config.",
                        "Pass --data DIR (a folder of class sub-folders, or of images).")
    return root


def _open_runner(runtime: str, model_path: Path, *, device: str, providers: list[str] | None,
                 batch_size: int | None, torch_options: Any = None,
                 ) -> tuple[Any, ModelMeta | None, dict[str, Any]]:
    if runtime == "pytorch":
        from pochitrain.inference.torch_runner import TorchRunner, resolve_device
        from pochitrain.models import load_model

        resolved = resolve_device(device)
        if device == "auto" and resolved == "cpu":
            from pochitrain.console import info as say

            say("CUDA が使えないため CPU で推論します / No CUDA GPU here: running PyTorch on "
                 "the CPU.")
        model, meta = load_model(model_path)
        return TorchRunner(model, resolved, torch_options), meta, {}
    if runtime == "onnx":
        from pochitrain.inference.onnx_runner import open_onnx_runner

        runner, info = open_onnx_runner(model_path, providers)
        return runner, info.meta, {"onnx_info": info}
    from pochitrain.tensorrt.runtime import open_trt_runner

    trt_runner, engine_meta = open_trt_runner(model_path, batch_size)
    recorded = engine_meta.get("model")
    trt_meta = ModelMeta.from_dict(recorded, where=str(model_path)) if recorded else None
    return trt_runner, trt_meta, {"engine_meta": engine_meta}


def _check_input_size(runtime: str, extra: dict, meta: ModelMeta) -> None:
    want = tuple(meta.preprocess.input_size)
    fixed: tuple[int, int] | None = None
    if runtime == "onnx":
        fixed = extra["onnx_info"].fixed_hw
    elif runtime == "tensorrt":
        inp = extra["engine_meta"].get("input", {})
        shape = (inp.get("profile") or {}).get("opt") or inp.get("static_shape")
        fixed = (int(shape[2]), int(shape[3])) if shape else None
    if fixed is not None and tuple(fixed) != want:
        raise ShapeError(
            f"The model expects {fixed[0]}x{fixed[1]} images but the preprocessing produces "
            f"{want[0]}x{want[1]}.",
            "Use the config the model was trained with (-c), or re-export/convert the model "
            f"with --input-size {want[0]} {want[1]}.",
        )


def infer(model_path: Path | str, data: Path | str | None = None,
          output: Path | str | None = None, batch_size: int | None = None,
          config: Path | str | None = None, device: str = "auto",
          providers: list[str] | None = None, warmup_runs: int = 2,
          expect_runtime: str | None = None, progress: bool = True, pipeline: str = "auto",
          precision: str = "fp32", channels_last: bool = False,
          cuda_graph: bool = False) -> InferOutcome:
    """``pipeline`` (auto | cpu | gpu), ``precision``, ``channels_last`` and ``cuda_graph``
    are PyTorch-runner options (see ``inference.torch_runner`` / ``gpu_preprocess``)."""
    model_path = Path(model_path)
    runtime = runtime_for(model_path)
    if expect_runtime is not None and runtime != expect_runtime:
        raise ModelFileError(
            f"{model_path} is not a {expect_runtime} model (it looks like {runtime}).",
            "Use 'pochi infer MODEL' to pick the runtime from the file type.",
        )
    if not model_path.exists() and runtime != "tensorrt":  # infer-trt owns its own message
        raise ModelFileError(f"Model file not found: {model_path}", "Check the path.")
    torch_options = None
    if runtime == "pytorch":
        from pochitrain.inference.torch_runner import TorchOptions

        torch_options = TorchOptions(precision, channels_last, cuda_graph)
    elif pipeline == "gpu" or precision != "fp32" or channels_last or cuda_graph:
        from pochitrain.errors import UsageError

        raise UsageError("--pipeline gpu, --precision, --channels-last and --cuda-graph are "
                         f"PyTorch (.pth) options; {model_path.name} runs on {runtime}.",
                         "Drop them (ONNX/TensorRT precision is chosen at export/convert time).")
    runner, model_meta, extra = _open_runner(runtime, model_path, device=device,
                                             providers=providers, batch_size=batch_size,
                                             torch_options=torch_options)
    try:
        meta = resolve_meta(model_meta, model_path, Path(config) if config else None)
        _check_input_size(runtime, extra, meta)
        data_dir = Path(data) if data else _default_data(model_path)
        folder = scan_image_folder(data_dir, "data folder")
        check_classes(folder, meta.class_names)
        folder = remap_labels(folder, meta.class_names)
        bs = batch_size or getattr(runner, "default_batch_size", None) or 1
        batches, pipeline_text = _input_pipeline(runtime, runner, pipeline, meta)
        result = run_inference(runner, folder, meta.preprocess, bs, meta.class_names,
                               warmup_runs=warmup_runs, progress=progress, batches=batches)
        info = {"model": str(model_path), "data": str(data_dir),
                "input_size": "x".join(str(v) for v in meta.preprocess.input_size),
                "pipeline": pipeline_text, **runner.describe()}
    finally:
        runner.close()
    if not result.measured:
        raise DataError(f"None of the {len(result.skipped)} files in {data_dir} could be read "
                        "as images.", "Check the data folder.")
    out_dir = _output_dir(model_path, output)
    from pochitrain.reports import write_reports

    files = write_reports(result, out_dir, info)
    return InferOutcome(out_dir, files, result)


def _input_pipeline(runtime: str, runner: Any, pipeline: str,
                    meta: ModelMeta) -> tuple[Any, str]:
    """(batch source for run_inference or None for the CPU path, text for the summary)."""
    if runtime != "pytorch":
        return None, "cpu (PIL, decode threads)"
    from pochitrain.inference.gpu_preprocess import GpuBatches, resolve_pipeline

    choice, why = resolve_pipeline(pipeline, runner.device, meta.preprocess)
    if choice == "cpu":
        return None, f"cpu (PIL, decode threads; {why})"
    source = GpuBatches(meta.preprocess, runner.device)
    return source, source.describe()


def _output_dir(model_path: Path, output: Path | str | None) -> Path:
    """--output DIR is used as is (must hold no earlier results); default: a new run folder."""
    if output is None:
        return new_run_dir(run_folder_of(model_path) / "inference_results")
    out = Path(output)
    if out.exists() and any(out.glob("*_inference_results.csv")):
        raise PochiError(f"{out} already holds inference results.",
                         "Choose a new --output folder (results are never overwritten).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PochiError(f"Cannot create output folder {out}: {exc.strerror}",
                         "Choose a writable --output folder.") from exc
    if not os.access(out, os.W_OK):
        raise PochiError(f"Output folder is not writable: {out}",
                         "Choose a writable --output folder.")
    return out

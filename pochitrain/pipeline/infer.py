"""`pochi infer` / `infer-onnx` / `infer-trt`: one function, the runtime picked by file type.

Steps: open the model (``inference.open``: runner + metadata from ``resolve``) -> list the
images -> the shared inference loop -> reports. Class names never come from the folder being
inferred.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pochitrain.data import ImageFolder, check_classes, remap_labels, scan_image_folder
from pochitrain.errors import DataError, PochiError, UsageError
from pochitrain.inference.loop import InferenceResult, run_inference
from pochitrain.inference.open import OpenModel, open_model
from pochitrain.workspace import new_run_dir, run_folder_of


@dataclass
class InferOutcome:
    out_dir: Path
    files: list[Path]
    result: InferenceResult


def infer(model_path: Path | str, data: Path | str | None = None,
          output: Path | str | None = None, batch_size: int | None = None,
          config: Path | str | None = None, device: str = "auto",
          providers: list[str] | None = None, warmup_runs: int = 2,
          expect_runtime: str | None = None, progress: bool = True, pipeline: str = "auto",
          precision: str = "fp32", channels_last: bool = False,
          cuda_graph: bool = False, benchmark_json: bool = False,
          benchmark_env_name: str | None = None) -> InferOutcome:
    """Classify ``data`` (a folder, or one image file) with any model file; write the reports.

    ``pipeline`` (auto | cpu | gpu), ``precision``, ``channels_last`` and ``cuda_graph``
    are PyTorch-runner options (see ``inference.torch_runner`` / ``gpu_preprocess``).
    ``benchmark_json`` also writes ``benchmark_result.json`` (``bench.result_json``).
    """
    model_path = Path(model_path)
    from pochitrain.plot_helper import PlotHelper

    plotter = PlotHelper().start()  # imports matplotlib on another core meanwhile
    try:
        options = torch_options(model_path, precision, channels_last, cuda_graph)
        out_dir = _check_output(output)
        model = open_model(model_path, config=config, device=device, providers=providers,
                           batch_size=batch_size, torch_options=options,
                           expect_runtime=expect_runtime)
        bench = None
        if benchmark_json:
            from pochitrain.bench.result_json import BenchProbe

            bench = BenchProbe(model, benchmark_env_name, config)
        try:
            data_dir = Path(data) if data else _default_data(model_path)
            folder = _data_folder(data_dir, model.meta.class_names)
            bs = batch_size or model.default_batch_size()
            batches, describe = _input_pipeline(model, pipeline)
            result = run_inference(model.runner, folder, model.meta.preprocess, bs,
                                   model.meta.class_names, warmup_runs=warmup_runs,
                                   progress=progress, batches=batches)
            pipeline_text = describe()
            info = {"model": str(model_path), "data": str(data_dir),
                    "input_size": "x".join(str(v) for v in model.meta.preprocess.input_size),
                    "pipeline": pipeline_text, **model.runner.describe()}
            if bench is not None:
                bench.capture(model, pipeline_text)
        finally:
            model.close()
        if not result.measured:
            raise DataError(f"None of the {len(result.skipped)} files in {data_dir} could be read "
                            "as images.", "Check the data folder.")
        from pochitrain.reports import write_reports

        out_dir = (_make_output(out_dir) if out_dir is not None
                   else new_run_dir(run_folder_of(model_path) / "inference_results"))
        from pochitrain.resolve import confusion_style

        files = write_reports(result, out_dir, info, confusion_style(model_path, config),
                              plotter)
        if model.runtime == "pytorch":  # the original's model_info.json
            from pochitrain.reports import write_model_info

            files.append(write_model_info(out_dir, model_path, model.meta.model_name,
                                          model.meta.num_classes, str(model.runner.device)))
        if bench is not None:
            files += bench.write(out_dir, result)
        return InferOutcome(out_dir, files, result)
    finally:
        plotter.close()


def torch_options(model_path: Path, precision: str, channels_last: bool,
                   cuda_graph: bool) -> Any:
    from pochitrain.inference.open import runtime_for

    runtime = runtime_for(model_path)
    if runtime == "pytorch":
        from pochitrain.inference.torch_runner import TorchOptions

        return TorchOptions(precision, channels_last, cuda_graph)
    if precision != "fp32" or channels_last or cuda_graph:
        raise UsageError("--precision, --channels-last and --cuda-graph are "
                         f"PyTorch (.pth) options; {model_path.name} runs on {runtime}.",
                         "Drop them (ONNX/TensorRT precision is chosen at export/convert time).")
    return None


def _data_folder(data: Path, class_names: list[str]) -> ImageFolder:
    """A folder of class sub-folders or of images, or a single image file; labels follow the
    model's class order."""
    if data.is_file():
        return ImageFolder(data.parent, [], [(data, -1)])
    folder = scan_image_folder(data, "data folder")
    check_classes(folder, class_names)
    return remap_labels(folder, class_names)


def _default_data(model_path: Path) -> Path:
    from pochitrain.resolve import find_val_data

    root = find_val_data(model_path)
    if root is None:
        raise DataError("No data folder given and none found in the run's config.",
                        "Pass --data DIR (a folder of class sub-folders, or of images).")
    return root


def _model_device(model: OpenModel) -> str:
    """Where the model runs, for the choice of input pipeline."""
    if model.runtime == "pytorch":
        return str(model.runner.device)
    return "cuda" if model.runner.on_cuda else "cpu"  # ONNX Runtime provider, TensorRT pipe


def _input_pipeline(model: OpenModel, pipeline: str) -> tuple[Any, Any]:
    """(batch source for run_inference or None for the CPU path, a callable giving the text
    for the summary: asked after the run, so that nvJPEG's start-up probe, which it waits for,
    overlaps the first batches instead of delaying them).

    On a GPU every runtime gets the same GPU input pipeline (nvJPEG decode, resize and
    normalize on the GPU): PyTorch and TensorRT take its CUDA tensors on the shared CUDA path,
    ONNX Runtime binds them in place (IOBinding)."""
    from pochitrain.inference.gpu_preprocess import GpuBatches, resolve_pipeline

    choice, why = resolve_pipeline(pipeline, _model_device(model), model.meta.preprocess)
    if choice == "cpu":
        return None, lambda: f"cpu (PIL, decode threads; {why})"
    source = GpuBatches(model.meta.preprocess, "cuda" if model.runtime != "pytorch"
                        else model.runner.device)
    return source, source.describe


def _check_output(output: Path | str | None) -> Path | None:
    """--output DIR, checked before any work so a bad path fails fast: it must hold no earlier
    results, and its parent must exist (it is created only once results are ready)."""
    if output is None:
        return None
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise PochiError(f"--output {out} is a file, not a folder.",
                         "Choose a folder for the result files.")
    if out.exists() and any(out.glob("*_inference_results.csv")):
        raise PochiError(f"{out} already holds inference results.",
                         "Choose a new --output folder (results are never overwritten).")
    if not out.parent.is_dir():
        raise PochiError(f"Output folder does not exist: {out.parent}",
                         "Create it first, or choose an --output inside an existing folder.")
    if not os.access(out if out.exists() else out.parent, os.W_OK):
        raise PochiError(f"Output folder is not writable: {out}",
                         "Choose a writable --output folder.")
    return out


def _make_output(out: Path) -> Path:
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise PochiError(f"Cannot create output folder {out}: {exc.strerror}",
                         "Choose a writable --output folder.") from exc
    return out

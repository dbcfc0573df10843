"""`pochi infer` / `infer-onnx` / `infer-trt`: one function, the runtime picked by file type.

Steps: open the model (the model facade: runner, context, input pipeline) -> list the images
-> the shared inference loop -> reports. Class names never come from the folder being
inferred; the model's config is read at most once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pochitrain.data import ImageFolder, check_classes, remap_labels, scan_image_folder
from pochitrain.errors import DataError, PochiError
from pochitrain.inference.loop import run_inference
from pochitrain.model import Model, open_model, torch_options
from pochitrain.reports import InferenceResult
from pochitrain.workspace import (
    check_output_dir,
    claimed_output_dir,
    new_run_dir,
    run_folder_of,
)

if TYPE_CHECKING:
    from pochitrain.bench.result_json import BenchProbe
    from pochitrain.plot_helper import PlotHelper


@dataclass
class InferOutcome:
    out_dir: Path
    files: list[Path]
    result: InferenceResult


@dataclass
class _Pass:
    """One pass of the inference loop over the data, with what the reports need."""

    model: Model
    data_dir: Path
    result: InferenceResult
    info: dict[str, str]
    bench: BenchProbe | None


def infer(model_path: Path | str, data: Path | str | None = None,
          output: Path | str | None = None, batch_size: int | None = None,
          config: Path | str | None = None, device: str = "auto",
          providers: list[str] | None = None, warmup_runs: int = 2,
          expect_runtime: str | None = None, progress: bool = True, pipeline: str = "auto",
          precision: str = "fp32", channels_last: bool = False,
          cuda_graph: bool = False, benchmark_json: bool = False,
          benchmark_env_name: str | None = None,
          explain_errors: bool = False) -> InferOutcome:
    """Classify ``data`` (a folder, or one image file) with any model file; write the reports.

    ``pipeline`` (auto | cpu | gpu) is the input pipeline (``Model.input_pipeline``);
    ``precision``, ``channels_last`` and ``cuda_graph`` are PyTorch-runner options.
    ``benchmark_json`` also writes ``benchmark_result.json`` (``bench.result_json``);
    ``explain_errors`` a gallery of the misclassified images with their Grad-CAM heatmaps
    (``explain.run``).
    """
    from pochitrain.arguments import count_argument, file_argument, path_argument
    from pochitrain.plot_helper import PlotHelper

    model_path = file_argument("model_path", model_path, "'models/best.onnx'")
    for name, value in (("data", data), ("output", output), ("config", config)):
        path_argument(name, value)
    if batch_size is not None:
        batch_size = count_argument("batch_size", batch_size)

    plotter = PlotHelper().start()  # imports matplotlib on another core meanwhile
    try:
        options = torch_options(model_path, precision, channels_last, cuda_graph)
        gallery = None
        if explain_errors:  # its extra and checkpoint are checked before the inference runs
            from pochitrain.explain.run import prepare

            gallery = prepare(model_path, config, device)
        out_dir = check_output_dir(output, _refuse_earlier_results)
        with contextlib.ExitStack() as claim:
            if out_dir is not None:  # this run's alone from now on: two runs never mix
                claim.enter_context(claimed_output_dir(out_dir, _refuse_earlier_results))
            model = open_model(model_path, config=config, device=device, providers=providers,
                               batch_size=batch_size, torch_options=options,
                               expect_runtime=expect_runtime)
            with model:
                bench = None
                if benchmark_json:
                    from pochitrain.bench.result_json import BenchProbe

                    bench = BenchProbe(model, benchmark_env_name)
                done = _run_pass(model, data, batch_size, warmup_runs, progress, pipeline,
                                 bench)
            if out_dir is None:
                out_dir = new_run_dir(run_folder_of(model_path) / "inference_results")
                claim.enter_context(claimed_output_dir(out_dir, new=True))
            files = _write(done, out_dir, plotter)
            if gallery is not None:
                files += gallery.write(done.result, out_dir, progress)
            return InferOutcome(out_dir, files, done.result)
    finally:
        plotter.close()


def _run_pass(model: Model, data: Path | str | None, batch_size: int | None,
              warmup_runs: int, progress: bool, pipeline: str,
              bench: BenchProbe | None) -> _Pass:
    data_dir = Path(data) if data else _default_data(model)
    folder = _data_folder(data_dir, model.class_names)
    source = model.input_pipeline(pipeline)
    result = run_inference(model.runner, folder, model.preprocess,
                           batch_size or model.default_batch_size(), model.class_names,
                           warmup_runs=warmup_runs, progress=progress, batches=source.batches)
    pipeline_text = source.describe()
    info = {"model": str(model.path), "data": str(data_dir),
            "input_size": "x".join(str(v) for v in model.preprocess.input_size),
            "pipeline": pipeline_text, **model.runner.describe()}
    if bench is not None:
        bench.capture(model, pipeline_text)
    if not result.measured:
        raise DataError("画像として読み込めるファイルがありません\n"
                        f"None of the {len(result.skipped)} files in {data_dir} could be read "
                        "as images.", "Check the data folder.")
    return _Pass(model, data_dir, result, info, bench)


def _write(done: _Pass, out_dir: Path, plotter: PlotHelper) -> list[Path]:
    from pochitrain.reports import write_reports

    model = done.model
    files = write_reports(done.result, out_dir, done.info, model.context.confusion_style,
                          plotter)
    if model.backend.writes_model_info:  # the original's model_info.json
        from pochitrain.reports import write_model_info

        files.append(write_model_info(out_dir, model.path, model.meta.model_name,
                                      model.meta.num_classes, model.device))
    if done.bench is not None:
        files += done.bench.write(out_dir, done.result)
    return files


def _data_folder(data: Path, class_names: list[str]) -> ImageFolder:
    """A folder of class sub-folders or of images, or a single image file; labels follow the
    model's class order."""
    if data.is_file():
        return ImageFolder(data.parent, [], [(data, -1)])
    folder = scan_image_folder(data, "data folder")
    check_classes(folder, class_names)
    return remap_labels(folder, class_names)


def _default_data(model: Model) -> Path:
    root = model.context.data_root
    if root is None:
        raise DataError("データフォルダが指定されておらず、config にもありません\n"
                        "No data folder given and none found in the run's config.",
                        "Pass --data DIR (a folder of class sub-folders, or of images).")
    return root


def _refuse_earlier_results(out: Path) -> None:
    if out.is_dir() and any(out.glob("*_inference_results.csv")):
        raise PochiError("出力フォルダにはすでに推論結果があります\n"
                         f"{out} already holds inference results.",
                         "Choose a new --output folder (results are never overwritten).")

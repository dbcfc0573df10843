"""`pochi infer MODEL`: inference with the runtime chosen by the model's file type."""

from __future__ import annotations

import argparse

from pochitrain.cli.common import add_config, add_runtime_options, count_at_most, positive_int
from pochitrain.inference import MAX_WARMUP_RUNS

DESCRIPTION = """\
Run inference on a folder of images and write the results.

MODEL picks the runtime: .pth -> PyTorch, .onnx -> ONNX Runtime, .engine -> TensorRT.
Class names and preprocessing come from the model file's metadata; a config (-c, or the
config.py found beside the run) is the fallback.

Writes into inference_results/YYYYMMDD_NNN/ next to the run (or --output):
  <runtime>_inference_results.csv   image_path, predicted, predicted_class, true, true_class,
                                    confidence, correct
  <runtime>_inference_summary.txt   accuracy, pure and end-to-end ms/image and images/s, ...
  classification_report.csv         per-class precision / recall / f1 (labelled data)
  confusion_matrix.png              (labelled data)
"""


# the original pochitrain's CPU pipelines (PIL decode; torchvision decode), both our cpu one
ORIGINAL_PIPELINES = ("current", "fast")


def pipeline_arg(value: str) -> str:
    """``--pipeline`` as the input pipeline takes it: the original's names become ``cpu``,
    with a notice."""
    if value not in ORIGINAL_PIPELINES:
        return value
    from pochitrain.console import info

    info(f"注意: --pipeline {value} は CPU パイプラインで実行します / Note: --pipeline {value} "
         "(the original's name) runs as --pipeline cpu: PIL decode + resize in threads")
    return "cpu"


def add_infer_arguments(parser: argparse.ArgumentParser, model_help: str,
                        expect_runtime: str | None = None) -> None:
    """The options of every inference verb; the others of ``pochi infer`` keep their defaults
    (``run`` reads them) for infer-onnx / infer-trt."""
    parser.set_defaults(expect_runtime=expect_runtime, device="auto", providers=None,
                        precision="fp32", channels_last=False, cuda_graph=False,
                        explain_errors=False)
    parser.add_argument("model", metavar="MODEL", help=model_help)
    parser.add_argument("--data", "-d", default=None, metavar="DIR",
                        help="images to classify: DIR/<class>/*.png (labelled, accuracy is "
                        "reported) or DIR/*.png (unlabelled). Default: the val_data_root of the "
                        "run's config")
    parser.add_argument("--output", "-o", default=None, metavar="DIR",
                        help="folder for the result files (default: "
                        "inference_results/YYYYMMDD_NNN next to the run); never overwritten")
    parser.add_argument("--batch-size", "-b", type=positive_int, default=None, metavar="N",
                        help="images per model call (default: 32; a fixed-batch ONNX: its "
                        "batch; TensorRT: the engine profile's opt batch). Use 1 to measure "
                        "per-image latency")
    add_config(parser)
    parser.add_argument("--warmup", type=count_at_most(MAX_WARMUP_RUNS), default=2, metavar="N",
                        help="untimed warm-up runs on a blank batch of the first batch's shape "
                             "(default: 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--pipeline", choices=("auto", "cpu", "gpu", *ORIGINAL_PIPELINES),
                        default="auto",
                        help="input pipeline: cpu = PIL decode + resize in threads; gpu = JPEG "
                        "decode by nvJPEG, resize/crop/normalize on the GPU, handed to the "
                        "runtime in device memory (ONNX Runtime: IOBinding), falling back to "
                        "cpu without a CUDA GPU; auto (default) = gpu when the model runs on "
                        "CUDA and the interpolation is supported. The original's current and "
                        "fast run as cpu")
    parser.add_argument("--benchmark-json", action="store_true",
                        help="also write benchmark_result.json (the original's schema 1.0.0: "
                        "runtime, precision, timings, accuracy) and benchmark_details.json "
                        "(per-batch latencies, peak GPU memory), as read by 'pochi bench'")
    parser.add_argument("--benchmark-env-name", default=None, metavar="NAME",
                        help="env_name in benchmark_result.json (default: <OS>-<GPU name> or "
                        "<OS>-CPU)")


def configure(parser: argparse.ArgumentParser) -> None:
    add_infer_arguments(parser, "a .pth checkpoint, .onnx model or TensorRT .engine")
    gpu = add_runtime_options(parser, "cuda when onnxruntime-gpu and an NVIDIA GPU are present, "
                              "else cpu")
    gpu.add_argument("--cuda-graph", action="store_true",
                     help="capture the model call as a CUDA graph per batch shape and replay "
                     "it (removes launch overhead; biggest gain at small batch sizes)")
    parser.add_argument("--explain-errors", action="store_true",
                        help="also draw explain_errors.png: the misclassified images (labelled "
                        "data) with the Grad-CAM heatmaps of their top-3 classes, most "
                        "confident mistakes first. An .onnx / .engine uses the checkpoint of "
                        "its run. Needs pip install \"pochitrain[explain]\"")


def run(args: argparse.Namespace) -> int:
    from pochitrain.console import info
    from pochitrain.pipeline.infer import infer

    check_runtime_options(args)
    outcome = infer(
        args.model, data=args.data, output=args.output, batch_size=args.batch_size,
        config=args.config, device=args.device, providers=args.providers,
        warmup_runs=max(0, args.warmup), expect_runtime=args.expect_runtime,
        progress=not args.quiet, pipeline=pipeline_arg(args.pipeline), precision=args.precision,
        channels_last=args.channels_last, cuda_graph=args.cuda_graph,
        benchmark_json=args.benchmark_json, benchmark_env_name=args.benchmark_env_name,
        explain_errors=args.explain_errors,
    )
    print_outcome(outcome)
    info(f"[green]結果 / Results:[/green] {outcome.out_dir}")
    return 0


def check_runtime_options(args: argparse.Namespace) -> None:
    """--device is PyTorch's and --providers ONNX Runtime's: asked of another runtime they
    would be ignored, and the run would not be on what was asked."""
    from pochitrain.errors import UsageError
    from pochitrain.model import backend_for

    backend = backend_for(args.model)
    runtime = backend.runtime
    if args.device != "auto" and not backend.torch_options and not args.explain_errors:
        raise UsageError("--device は PyTorch (.pth) のモデルでのみ使えます\n"
                         f"--device {args.device} is a PyTorch (.pth) option; {args.model} runs on "
                         f"{runtime}.",
                         "ONNX Runtime: --providers cpu|cuda; TensorRT always runs on the GPU.")
    if args.providers and not backend.takes_providers:
        raise UsageError("--providers は ONNX モデルでのみ使えます\n"
                         f"--providers is an ONNX Runtime option; {args.model} runs on "
                         f"{runtime}.",
                         "Drop it (PyTorch: --device cpu|cuda).")


def print_outcome(outcome) -> None:
    from pochitrain.console import info

    r = outcome.result
    acc = r.accuracy
    acc_text = f"{100 * acc:.2f}%" if acc is not None else "n/a (unlabelled)"
    info(f"[bold]{r.runtime}[/bold]: {r.measured} images, accuracy {acc_text}, "
         f"pure {r.images_per_second(r.pure_seconds):.1f} img/s, "
         f"end-to-end {r.images_per_second(r.e2e_seconds):.1f} img/s"
         + (f", skipped {len(r.skipped)}" if r.skipped else ""))
    for path in outcome.files:
        info(f"  {path}")

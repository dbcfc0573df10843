"""`infer-onnx MODEL.onnx` (also `pochi infer-onnx`): inference with ONNX Runtime."""

from __future__ import annotations

import argparse

from pochitrain.cli.infer import add_infer_arguments, run  # noqa: F401 - the verb's run

DESCRIPTION = """\
Run an ONNX model with ONNX Runtime on a folder of images.

Same result files as 'pochi infer', prefixed onnx_ (onnx_inference_results.csv,
onnx_inference_summary.txt), plus the execution providers in the summary. Preprocessing
comes from the ONNX metadata written by export-onnx; -c/--config-path overrides it (needed
for ONNX files exported elsewhere).
"""


def configure(parser: argparse.ArgumentParser) -> None:
    add_infer_arguments(parser, "an .onnx model", "onnx")
    parser.add_argument("--providers", nargs="+", default=None, metavar="EP",
                        help="execution providers in order of preference: cpu, cuda, tensorrt "
                        "or full names like CUDAExecutionProvider (default: cuda when "
                        "onnxruntime-gpu and an NVIDIA GPU are present, else cpu)")


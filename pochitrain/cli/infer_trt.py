"""`infer-trt ENGINE` (also `pochi infer-trt`): inference with a TensorRT engine."""

from __future__ import annotations

import argparse

from pochitrain.cli.infer import add_infer_arguments, run  # noqa: F401 - the verb's run

DESCRIPTION = """\
Run a TensorRT engine built by 'pochi convert' on a folder of images.

Same result files as 'pochi infer', prefixed tensorrt_, plus backend, version and precision
in the summary. Class names, preprocessing and the optimization profile come from the engine's
metadata file (<engine>.json, written by pochi convert). The batch size defaults to the
profile's opt batch and must lie within its min..max.

Needs an NVIDIA GPU and the TensorRT (or TensorRT-RTX) runtime the engine was built with;
an engine built on another machine or TensorRT version must be rebuilt with 'pochi convert'.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    add_infer_arguments(parser, "a TensorRT .engine file built by 'pochi convert'", "tensorrt")


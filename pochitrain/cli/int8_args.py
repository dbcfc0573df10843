"""INT8 options of `pochi convert`. Their defaults come from pochitrain.onnx.int8_defaults,
a module of constants only, so `pochi --help` imports neither numpy nor ONNX."""

from __future__ import annotations

import argparse
from typing import Any

from pochitrain.cli.common import number_arg, whole_number
from pochitrain.onnx.int8_defaults import (
    CALIB_METHODS,
    DEFAULT_CALIB_BATCH_SIZE,
    DEFAULT_MAX_DROP,
    DEFAULT_METHOD,
    DEFAULT_SAMPLES,
    DEFAULT_VERIFY_SAMPLES,
)

METHODS = CALIB_METHODS  # the --calib-method choices


_points = number_arg(lambda v: v >= 0, "must be 0 or more, got {text}",
                     "expected a number of points, got {text!r}")


def add_int8_arguments(parser: argparse.ArgumentParser, precision_group: Any = None) -> None:
    """Add ``--int8`` (into ``precision_group`` when given, so that it excludes --fp16) and the
    calibration options. ``-c/--config-path`` is the caller's (pochitrain.cli.common)."""
    (precision_group if precision_group is not None else parser).add_argument(
        "--int8", action="store_true",
        help="INT8 engine: calibrate on the CPU into a Q/DQ ONNX graph (<stem>_int8_qdq.onnx, "
        "kept), check its accuracy against FP32 with ONNX Runtime, then build it. Needs "
        "calibration images (--calib-data or the config's val_data_root)")
    group = parser.add_argument_group(
        "INT8 calibration",
        "Used with --int8. Preprocessing comes from the ONNX metadata, else from the "
        "val_transform of the config (-c, or config.py auto-detected beside the run).")
    group.add_argument(
        "--calib-data", default=None, metavar="DIR",
        help="calibration images: one sub-folder per class (sampled stratified) or a flat "
        "folder (default: val_data_root of the config). 20%% of each class is held out for the "
        "accuracy check and never calibrated on")
    group.add_argument(
        "--calib-samples", type=whole_number, default=DEFAULT_SAMPLES, metavar="N",
        help=f"number of calibration images, picked deterministically (seeded); fewer available "
        f"-> all are used (default: {DEFAULT_SAMPLES})")
    group.add_argument(
        "--calib-batch-size", type=whole_number, default=DEFAULT_CALIB_BATCH_SIZE, metavar="N",
        help="images per calibration batch. Calibration runs in ONNX Runtime on the CPU, so it "
        "is not limited by the engine profile; a fully static ONNX (pattern 3) needs its own "
        "batch size. Only full batches are used "
        f"(default: {DEFAULT_CALIB_BATCH_SIZE})")
    group.add_argument(
        "--calib-method", choices=METHODS, default=DEFAULT_METHOD,
        help="how activation ranges are chosen: 'percentile' clips the top 0.001%% of "
        "|values|, 'entropy' minimises KL divergence (TensorRT's classic calibrator), 'minmax' "
        f"keeps the full range. Weights are always per-channel (default: {DEFAULT_METHOD})")
    group.add_argument(
        "--max-accuracy-drop", type=_points, default=DEFAULT_MAX_DROP, metavar="PTS",
        help="largest allowed top-1 drop of INT8 vs FP32 on the held-out images, in percentage "
        "points (agreement with FP32 for unlabelled folders); larger -> error, nothing built "
        f"(default: {DEFAULT_MAX_DROP:g})")
    group.add_argument(
        "--verify-samples", type=whole_number, default=DEFAULT_VERIFY_SAMPLES, metavar="N",
        help="at most this many held-out images for the accuracy check "
        f"(default: {DEFAULT_VERIFY_SAMPLES})")
    group.add_argument(
        "--no-calib-cache", action="store_true",
        help="always recalibrate. By default <stem>_int8_qdq.onnx is reused when its key "
        "<stem>_int8_qdq.json matches (same ONNX, preprocessing, images, samples, batch size, "
        "method)")


def int8_options_from_args(args: argparse.Namespace) -> Any:
    """argparse namespace -> pochitrain.onnx.int8.Int8Options (validated)."""
    from pathlib import Path

    from pochitrain.onnx.int8 import Int8Options, check_options

    config = getattr(args, "config", None)
    opts = Int8Options(
        calib_data=Path(args.calib_data) if args.calib_data else None,
        calib_samples=args.calib_samples,
        calib_batch_size=args.calib_batch_size,
        calib_method=args.calib_method,
        config_path=Path(config) if config else None,
        max_accuracy_drop=args.max_accuracy_drop,
        use_cache=not args.no_calib_cache,
        verify_samples=args.verify_samples,
    )
    check_options(opts)
    return opts

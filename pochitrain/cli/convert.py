"""`pochi convert MODEL.onnx`: build a TensorRT engine (FP32 / FP16 / INT8)."""

from __future__ import annotations

import argparse

from pochitrain.cli.common import add_config, add_input_size, input_size_arg, positive_int
from pochitrain.cli.int8_args import add_int8_arguments, int8_options_from_args

DESCRIPTION = """\
Build a TensorRT engine from an ONNX image classifier.

The shape of the ONNX input decides the pattern (conversion guide, "変換パターン"):

  pattern  ONNX input            --input-size   optimization profile           limits
  1        (batch, 3, 224, 224)  not needed     batch 1, H/W from the ONNX     none
           batch dynamic, H/W fixed: what export-onnx writes
  2        (batch, 3, h, w)      REQUIRED       batch 1, H/W from --input-size only that size
           H/W dynamic (other exporters); without --input-size:
           "ONNXモデルに動的シェイプが含まれています"
  3        (1, 3, 224, 224)      not needed     none (no dynamic dimension)    batch fixed
           every dimension fixed

The profile is min = opt = max (fixed-size inference). --batch-size N fixes the batch at N
instead of 1, --batch MIN OPT MAX gives a batch range; both are refused for pattern 3.

Precision is a property of the ONNX graph, and the network is always built strongly typed:
  FP32  the ONNX as exported (default)
  FP16  --fp16: weights/activations cast to float16, float32 input/output, written to
        <stem>_fp16.onnx and checked with ONNX Runtime against FP32 on real images
        (top-1 agreement must reach 97%) before the build
  INT8  --int8: a calibrated Q/DQ graph <stem>_int8_qdq.onnx (needs calibration images)
The parsed network is inspected before building: an engine of another precision than asked
is never written.

Output: <stem>.engine / <stem>_fp16.engine / <stem>_int8.engine beside the ONNX, plus the
metadata sidecar <engine>.json (backend, precision, pattern, input/output names and profile,
class names and preprocessing, source ONNX sha256, build options). Both are written
atomically; an existing file is only replaced with --overwrite.
"""

EPILOG = """\
examples (conversion guide):
  pochi convert model.onnx                                  # pattern 1, FP32
  pochi convert model.onnx --fp16                           # pattern 1, FP16
  pochi convert model.onnx --int8 --calib-data data/val     # pattern 1, INT8
  pochi convert dynamic_model.onnx --fp16 --input-size 224 224   # pattern 2
  pochi convert static_model.onnx --fp16                    # pattern 3
  pochi convert model.onnx --batch-size 8 --output model_b8.engine
"""

_UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gib": 1 << 30}


def byte_size(text: str) -> int:
    """'1073741824', '1024M', '1G' or '1GiB' -> bytes."""
    raw = text.strip().lower()
    digits = raw.rstrip("kmgib")
    unit = raw[len(digits):]
    if unit.endswith("b") and unit not in _UNITS:
        unit = unit[:-1]
    try:
        value = int(digits) * _UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(
            f"expected a size in bytes such as 1073741824 or 1G, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    if value >= 1 << 63:  # TensorRT takes a 64-bit size
        raise argparse.ArgumentTypeError(f"must be less than 8 EiB, got {text!r}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("model", metavar="MODEL.onnx",
                        help="ONNX classifier with one image input (N, 3, H, W) and one output")
    prec = parser.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true",
                      help="build an FP16 engine from the FP16-cast graph (checked with ONNX "
                      "Runtime against FP32 first)")
    add_input_size(parser, "image height and width for the profile: required when the ONNX "
                   "has dynamic H/W (pattern 2); otherwise it must match the ONNX")
    parser.add_argument("--output", "-o", default=None, metavar="PATH",
                        help="engine file to write (default: <stem>.engine, <stem>_fp16.engine "
                        "or <stem>_int8.engine beside the ONNX); metadata goes to PATH.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing output files (engine, metadata, precision graph)")
    parser.add_argument("--workspace-size", type=byte_size, default=None, metavar="BYTES",
                        help="limit for the builder's workspace memory pool, e.g. 1073741824 "
                        "or 1G (default: TensorRT's own limit, the device memory)")
    parser.add_argument("--backend", choices=("auto", "tensorrt", "tensorrt-rtx"),
                        default="auto",
                        help="TensorRT to build with: 'tensorrt' (NVIDIA TensorRT 10/11), "
                        "'tensorrt-rtx' (TensorRT-RTX), or 'auto' = the first installed, "
                        "tensorrt before tensorrt-rtx (default: auto)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                       help="build for batch N instead of 1 (min = opt = max = N); not for "
                       "a fully static ONNX (pattern 3)")
    batch.add_argument("--batch", type=positive_int, nargs=3, default=None,
                       metavar=("MIN", "OPT", "MAX"),
                       help="build for a batch range MIN..MAX tuned for OPT (beyond the spec's "
                       "fixed profile); not for pattern 3")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--timing-cache", default=None, metavar="PATH",
                       help="TensorRT timing cache to load and update, so later builds skip "
                       "kernel timing (default: $XDG_CACHE_HOME/pochitrain/"
                       "timing-<backend>-<version>.cache; TensorRT-RTX has none)")
    cache.add_argument("--no-timing-cache", action="store_true",
                       help="neither read nor write a timing cache")
    parser.add_argument("--verify-data", default=None, metavar="DIR",
                        help="images for the --fp16 check: class sub-folders or plain images "
                        "(default: the run's val_data_root when found, else random inputs)")
    parser.add_argument("--fp16-min-agreement", type=float, default=None, metavar="FRACTION",
                        help="minimum top-1 agreement of the FP16 graph with FP32 for the "
                        "build to go on (default: 0.97)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no spinner, only the final summary (for logs and CI)")
    add_config(parser, "config.py whose val_transform / val_data_root INT8 calibration uses "
               "when the ONNX carries no preprocessing or --calib-data is not given "
               "(default: auto-detected beside the run)")
    add_int8_arguments(parser, prec)


def run(args: argparse.Namespace) -> int:
    from pochitrain.errors import UsageError
    from pochitrain.pipeline.convert import ConvertOptions, convert

    agreement = args.fp16_min_agreement
    if agreement is not None and not 0.0 <= agreement <= 1.0:
        raise UsageError("--fp16-min-agreement は 0 から 1 の間で指定してください\n"
                         f"--fp16-min-agreement must be between 0 and 1, got {agreement}.",
                         "Example: --fp16-min-agreement 0.95")
    precision = "fp16" if args.fp16 else "int8" if args.int8 else "fp32"
    result = convert(ConvertOptions(  # it takes the paths as str
        onnx_path=args.model, precision=precision, input_size=input_size_arg(args.input_size),
        output=args.output or None, overwrite=args.overwrite, workspace_size=args.workspace_size,
        backend=args.backend, batch_size=args.batch_size,
        batch_range=tuple(args.batch) if args.batch else None,
        timing_cache=args.timing_cache or None, no_timing_cache=args.no_timing_cache,
        verify_data=args.verify_data or None,
        fp16_min_agreement=agreement, int8=int8_options_from_args(args) if args.int8 else None,
        progress=not args.no_progress,
    ))
    _print_summary(result)
    return 0


def _print_summary(result) -> None:  # result: ConvertResult
    from pathlib import Path

    from rich.markup import escape
    from rich.table import Table

    from pochitrain.console import console

    meta = result.metadata
    table = Table(title="pochi convert", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value")
    rows = [
        ("pattern", str(meta["pattern"])),
        ("input", f"{meta['input']['name']} {meta['input']['onnx_shape']}"),
        ("profile", result.profile.text()),
        ("precision", meta["precision"].upper()),
        ("backend", f"{meta['backend']} {meta['backend_version']}"),
        ("engine size", f"{result.engine_size / 1e6:.1f} MB"),
        ("build time", f"{result.build_seconds:.1f} s"),
        ("engine", str(result.engine_path)),
        ("metadata", str(result.metadata_path)),
    ]
    if result.precision_graph.resolve() != Path(meta["source_onnx"]["path"]):
        rows.append(("precision graph", str(result.precision_graph)))
    rows.append(("timing cache", meta["build"]["timing_cache"] or "not used"))
    for key, value in rows:
        table.add_row(key, escape(value))
    console().print(table)


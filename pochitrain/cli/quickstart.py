"""`pochi quickstart [DIR]`: the whole pipeline on the built-in digits, one command."""

from __future__ import annotations

import argparse

from pochitrain.cli.common import positive_int

DESCRIPTION = """\
Run every step on the built-in handwritten-digits sample (no download):

  sample data -> train -> infer (PyTorch) -> export-onnx -> infer-onnx
  -> convert FP32 / FP16 / INT8 (when a TensorRT backend is installed) -> infer-trt (GPU)

and finish with a table of what was produced and where, and one row per runtime
(accuracy, pure images/s, end-to-end images/s). Steps that cannot run on this machine
(no TensorRT, no GPU) are listed with the reason. Running it again in the same DIR reuses
the sample data and starts a new training run.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", default="pochi_quickstart", metavar="DIR",
                        help="working folder for data, runs and results "
                        "(default: ./pochi_quickstart)")
    parser.add_argument("--epochs", type=positive_int, default=None, metavar="N",
                        help="training epochs (default: the sample config's value)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from pochitrain.pipeline.quickstart import print_report, quickstart

    report = quickstart(args.dir, epochs=args.epochs, progress=not args.quiet)
    print_report(report)
    return 0 if report.ok else 1

"""`export-onnx MODEL.pth` (also `pochi export-onnx`): checkpoint -> verified ONNX."""

from __future__ import annotations

import argparse

from pochitrain.cli.common import add_config, add_input_size, input_size_arg, positive_int
from pochitrain.models import SUPPORTED_MODELS  # the registry imports no torch

DESCRIPTION = """\
Export a pochitrain checkpoint (.pth) to ONNX and check the result.

The input is named 'input' with shape (batch_size, 3, H, W): batch dynamic, H/W fixed
(pattern 1 of the conversion guide, what 'pochi convert' expects by default). The model's
metadata (class names, input size, mean/std, preprocessing, checkpoint sha256) is stored in
the ONNX metadata_props, so infer-onnx and convert need no config file.

A checkpoint of the original pochitrain (no metadata) takes its model name, class names and
preprocessing from its training config: -c/--config, else config.py beside the checkpoint or
one folder up (the original's rule).

Verification (unless --skip-verify): onnx.checker, then ONNX Runtime (CPU) against PyTorch on
images of the validation folder at batch 1 and 16; the file is only written when they agree.

examples:
  export-onnx work_dirs/20260101_001/models/best.pth --input-size 224 224
  pochi export-onnx best.pth --static-batch 8 --output best_b8.onnx
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.pth",
                        help="checkpoint written by 'pochi train' (work_dirs/*/models/*.pth)")
    add_input_size(parser, "image height and width of the exported input "
                   "(default: the input size recorded in the checkpoint)")
    parser.add_argument("--output", "-o", default=None, metavar="PATH",
                        help="ONNX file to write (default: MODEL.onnx beside the checkpoint)")
    parser.add_argument("--opset", "--opset-version", dest="opset", type=positive_int,
                        default=17, metavar="N",
                        help="ONNX opset version (default: 17; supported 9-20)")
    add_config(parser, "training config of an original pochitrain checkpoint (default: "
               "config.py beside the checkpoint, then one folder up); pochitrain checkpoints "
               "carry their own metadata")
    parser.add_argument("--model-name", default=None, choices=SUPPORTED_MODELS,
                        help="network of an original pochitrain checkpoint (default: the "
                        "config's model_name; this option wins over the config)")
    parser.add_argument("--num-classes", type=positive_int, default=None, metavar="N",
                        help="outputs of an original pochitrain checkpoint (checked against "
                        "the checkpoint and the config's class folders)")
    parser.add_argument("--device", default="cpu",
                        help="device to load the checkpoint on: cpu (default), cuda or "
                        "cuda:N; the exported graph is the same")
    parser.add_argument("--skip-verify", action="store_true",
                        help="write the file without comparing ONNX Runtime to PyTorch")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--dynamic-spatial", action="store_true",
                       help="make height and width dynamic too: input (batch_size, 3, height, "
                       "width) (pattern 2; convert then needs --input-size)")
    shape.add_argument("--static-batch", type=positive_int, default=None, metavar="N",
                       help="fix every dimension, input (N, 3, H, W) (pattern 3: no "
                       "optimization profile; inference must use --batch-size N)")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="images to verify on: a folder of class sub-folders or of images "
                        "(default: the run's val_data_root; random inputs if none)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the output file if it exists")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pochitrain.console import info
    from pochitrain.onnx.export import ExportShape
    from pochitrain.pipeline.export_onnx import export_onnx

    size = input_size_arg(args.input_size)
    outcome = export_onnx(
        Path(args.model), input_size=size, output=args.output, opset=args.opset,
        verify=not args.skip_verify,
        shape=ExportShape(dynamic_spatial=args.dynamic_spatial, static_batch=args.static_batch),
        overwrite=args.overwrite, data=args.data, config=args.config,
        model_name=args.model_name, num_classes=args.num_classes, device=args.device,
    )
    _print_summary(outcome, info)
    return 0


def _print_summary(outcome, info) -> None:
    from rich.markup import escape
    from rich.table import Table

    from pochitrain.console import console

    report = outcome.report
    if report is not None:
        table = Table(title=f"ONNX Runtime vs PyTorch ({escape(report.inputs)})")
        for col in ("batch", "max abs diff", "tolerance", "top-1 agreement", "result"):
            table.add_column(col, justify="right")
        for c in report.checks:
            table.add_row(str(c.batch_size), f"{c.max_abs_diff:.2e}", f"{c.tolerance:.1e}",
                          f"{c.agreement:.1%} ({c.agree}/{c.images})",
                          "[green]ok[/green]" if c.ok else "[red]FAIL[/red]")
        console().print(table)
    else:
        info("[yellow]Verification skipped (--skip-verify).[/yellow]")
    shape = "(" + ", ".join(str(d) for d in outcome.input_shape) + ")"
    meta = outcome.meta
    info(f"[bold green]Wrote[/bold green] {escape(str(outcome.path))}\n"
         f"  input 'input' {shape}, output 'output' ({outcome.input_shape[0]}, {meta.num_classes})\n"
         f"  {meta.model_name}, classes: {escape(', '.join(meta.class_names[:10]))}"
         f"{' ...' if meta.num_classes > 10 else ''}")

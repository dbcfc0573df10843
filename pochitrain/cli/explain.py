"""`pochi explain MODEL IMAGE|DIR...`: Grad-CAM heatmap overlays."""

from __future__ import annotations

import argparse

from pochitrain.cli.common import add_config

DESCRIPTION = """\
Show where the model looks: Grad-CAM heatmaps (the grad-cam library) laid over the images.

Images are preprocessed exactly as 'pochi infer' does, and each heatmap is drawn on the
image as the model saw it (after resize / crop). An .onnx or TensorRT engine has no
gradients: its heatmaps come from the checkpoint of the same run it was exported from
(found through the file's metadata), and the output says so.

Writes into explain_results/YYYYMMDD_NNN next to the run (or --output):
  <image>_gradcam.png   the input, its heatmap overlay, predicted class and probability
  contact_sheet.png     per image, the overlays of its top-3 classes (pages of 16 images:
                        contact_sheet_1.png, ... when there are more)
  explain.csv           image_path, true_class (the class folder of an image in a folder
                        given, when the model has that class), predicted_class,
                        probability, target_class, target_probability, top3, heatmap_png

Needs the optional extra: pip install "pochitrain[explain]"

examples:
  pochi explain work_dirs/20260101_001/models/best_epoch10.pth data/val/cat
  pochi explain best.onnx img1.png img2.png --target-class dog -o heatmaps/
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="a .pth checkpoint, or an .onnx / .engine of a pochitrain run")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE|DIR",
                        help="image files, or folders searched recursively for images")
    parser.add_argument("--output", "-o", default=None, metavar="DIR",
                        help="folder for the PNGs (default: explain_results/YYYYMMDD_NNN next "
                        "to the run); never overwritten")
    parser.add_argument("--target-class", default="top", metavar="NAME|top",
                        help="the class each per-image heatmap explains: top (default: the "
                        "predicted class) or a class name of the model")
    parser.add_argument("--layer", default=None, metavar="NAME",
                        help="the module Grad-CAM reads, by its name in the network (e.g. "
                        "layer4, features.7). Default: the last convolutional block whose "
                        "feature map is at least 4x4 for this input size")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when available), cpu, cuda or cuda:N")
    add_config(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pochitrain.console import info
    from pochitrain.explain import explain

    outcome = explain(args.model, args.inputs, output=args.output,
                      target_class=args.target_class, layer=args.layer, device=args.device,
                      config=args.config, progress=not args.quiet)
    images = sum(1 for p in outcome.files if p.name.endswith("_gradcam.png"))
    info(f"[bold]Grad-CAM[/bold]: {images} image(s); {outcome.note}")
    info(f"[green]結果 / Results:[/green] {outcome.out_dir}")
    return 0

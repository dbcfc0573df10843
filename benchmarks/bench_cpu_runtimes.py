"""PyTorch (CPU) vs ONNX Runtime (CPU) on the same model and images, through the shared loop.

Prints pure (model call only) and end-to-end (decode + preprocess + model + postprocess)
images/s per runtime and batch size, the ONNX Runtime / PyTorch ratio, and how many
predictions agree. A benchmark, not a test: numbers depend on the machine and its load.

  python benchmarks/bench_cpu_runtimes.py                       # digits sample, untrained resnet18
  python benchmarks/bench_cpu_runtimes.py --checkpoint best.pth --data data/val --input-size 224 224
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="pochitrain .pth (default: an untrained resnet18 for the 10 digits; "
                   "throughput does not depend on the weights)")
    p.add_argument("--model-name", default="resnet18",
                   help="architecture of the default untrained model (default: resnet18)")
    p.add_argument("--data", type=Path, default=None,
                   help="image folder (default: the built-in digits val split, written to a "
                   "temp folder)")
    p.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="run at this size (preprocessing rescaled; default: the model's)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], metavar="N",
                   help="batch sizes to measure (default: 1 32)")
    p.add_argument("--limit", type=int, default=0,
                   help="use only the first N images, spread over the classes (0: all)")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads for both runtimes (default: usable CPU cores)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up runs (default: 3)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from pochitrain.console import console
    from pochitrain.data import ImageFolder, scan_image_folder
    from pochitrain.inference.loop import run_inference
    from pochitrain.inference.onnx_runner import open_onnx_runner
    from pochitrain.inference.torch_runner import TorchRunner
    from pochitrain.checkpoint import load_model
    from pochitrain.pipeline.export_onnx import export_onnx

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="pochi-bench-"))
    ckpt = args.checkpoint or _untrained_checkpoint(work, args.model_name)
    data = args.data or _digits_val(work)
    folder = scan_image_folder(data)
    if args.limit:
        step = max(1, len(folder.samples) // args.limit)
        folder = ImageFolder(folder.root, folder.classes, folder.samples[::step][: args.limit])
    model, meta = load_model(ckpt)
    h, w = args.input_size or meta.input_size
    size = (int(h), int(w))
    pre = meta.preprocess.resized_to(size)
    onnx_path = work / "model.onnx"
    export_onnx(ckpt, input_size=size, output=onnx_path, data=data, progress=False)

    torch_runner = TorchRunner(model, "cpu")
    onnx_runner, _ = open_onnx_runner(onnx_path, ["cpu"], threads=threads)
    rows = []
    for bs in args.batch_sizes:
        res = {}
        for runner in (torch_runner, onnx_runner):
            res[runner.name] = run_inference(runner, folder, pre, bs, meta.class_names,
                                             warmup_runs=args.warmup)
        rows.append((bs, res["pytorch"], res["onnx"]))

    from rich.table import Table

    table = Table(title=f"{meta.model_name} {size[0]}x{size[1]}, {len(folder.samples)} images, "
                  f"{threads} threads, torch {torch.__version__}, "
                  f"onnxruntime {onnx_runner.describe()['onnxruntime']}")
    for col in ("batch", "PyTorch pure", "ORT pure", "ratio", "PyTorch e2e", "ORT e2e", "ratio",
                "same top-1"):
        table.add_column(col, justify="right")
    for bs, pt, ox in rows:
        pt_pure, ox_pure = pt.images_per_second(pt.pure_seconds), ox.images_per_second(ox.pure_seconds)
        pt_e2e, ox_e2e = pt.images_per_second(pt.e2e_seconds), ox.images_per_second(ox.e2e_seconds)
        same = sum(a == b for a, b in zip(pt.preds, ox.preds)) / max(1, len(pt.preds))
        table.add_row(str(bs), f"{pt_pure:.1f}", f"{ox_pure:.1f}", f"{ox_pure / pt_pure:.2f}x",
                      f"{pt_e2e:.1f}", f"{ox_e2e:.1f}", f"{ox_e2e / pt_e2e:.2f}x", f"{same:.1%}")
    console().print(table)
    console().print("images/s; pure = model call only, e2e = decode + preprocess + model + "
                    "softmax (wall clock). ratio = ONNX Runtime / PyTorch.")
    return 0


def _untrained_checkpoint(work: Path, name: str) -> Path:
    import torch

    from pochitrain.meta import ModelMeta
    from pochitrain.checkpoint import save_checkpoint
    from pochitrain.models import build_model
    from pochitrain.preprocess import Preprocess
    from pochitrain.sample_data import CLASS_NAMES, SAMPLE_SIZE

    torch.manual_seed(0)
    model = build_model(name, len(CLASS_NAMES)).eval()
    path = work / f"{name}.pth"
    meta = ModelMeta(CLASS_NAMES, Preprocess.simple(SAMPLE_SIZE, SAMPLE_SIZE), model_name=name)
    save_checkpoint(path, model, meta)
    return path


def _digits_val(work: Path) -> Path:
    from pochitrain.sample_data import write_digits

    write_digits(work / "digits")
    return work / "digits" / "val"


if __name__ == "__main__":
    sys.exit(main())

"""GPU benchmark: PyTorch inference (CPU PIL pipeline vs GPU pipeline, fp32/fp16/bf16,
channels_last, CUDA graphs) and training (fp32 vs bf16 + channels_last) on one CUDA GPU.

One call, no downloads::

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 benchmarks/gpu_bench.py --out benchmarks/RESULTS.md

1. Writes a JPEG folder of ``--images`` real-looking images of varied sizes: random crops,
   scales, flips and colour shifts of scikit-learn's two sample photos; 8 classes = photo x
   quadrant the crop comes from. Two truncated JPEGs are added to check skip counting.
2. Trains resnet18 and resnet50 (224x224) with the package's training loop
   (``training.make_loader`` + ``run_epoch``): images/s per epoch with the DataLoader, and with
   GPU-resident batches (the same loop, no decoding) to show where a gap comes from.
3. Runs the trained models through ``inference.loop.run_inference`` with ``TorchRunner``
   (the code ``pochi infer`` runs) at batch 1, 32 and 256, for each pipeline / precision /
   layout; reports pure and end-to-end images/s, and top-1 agreement with the CPU pipeline.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import io
import os
import platform
import random
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

T0 = time.perf_counter()
LOADER_ONLY: list[float] = []  # DataLoader alone, img/s per epoch
INPUT_ONLY: dict[str, float] = {}  # GPU input pipeline stages alone, img/s
DIGITS: list[dict] = []  # pochi train on the digits sample, fp32 vs bf16


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


# ---- data -----------------------------------------------------------------------------------

def _photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)  # china.jpg, flower.jpg: 427x640 RGB


def _one_image(args: tuple[int, str]) -> None:
    index, root = args
    rng = random.Random(index)
    photos = _photos_cache()
    p = index % 2
    q = (index // 2) % 4
    photo = photos[p]
    h, w = photo.shape[:2]
    side = rng.randint(110, 300)
    cy = rng.randint(0, h // 2 - 1) + (h // 2 if q >= 2 else 0)
    cx = rng.randint(0, w // 2 - 1) + (w // 2 if q % 2 else 0)
    top = min(max(0, cy - side // 2), h - side)
    left = min(max(0, cx - side // 2), w - side)
    img = Image.fromarray(photo[top:top + side, left:left + side])
    aspect = rng.uniform(0.7, 1.45)
    long_side = rng.randint(224, 640)
    size = (long_side, max(160, int(long_side / aspect))) if aspect >= 1 else \
        (max(160, int(long_side * aspect)), long_side)
    img = img.resize(size, Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.3))
    out = Path(root) / f"p{p}_q{q}" / f"{index:05d}.jpg"
    img.save(out, quality=rng.randint(75, 95))


_PHOTOS: list[np.ndarray] | None = None


def _photos_cache() -> list[np.ndarray]:
    global _PHOTOS
    if _PHOTOS is None:
        _PHOTOS = _photos()
    return _PHOTOS


def make_images(root: Path, n: int) -> Path:
    for p in range(2):
        for q in range(4):
            (root / f"p{p}_q{q}").mkdir(parents=True, exist_ok=True)
    with Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(_one_image, [(i, str(root)) for i in range(n)], chunksize=32)
    good = (root / "p0_q0" / "00000.jpg").read_bytes()
    (root / "p0_q0" / "zz_truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "p1_q1" / "zz_not_a_jpeg.jpg").write_bytes(b"\xff\xd8\xff" + b"junk" * 100 + b"\xff\xd9")
    return root


# ---- training -------------------------------------------------------------------------------

def bench_training(models: dict, folder, epochs: int, batch_size: int, workers: int,
                   rows: list[dict]) -> None:
    import torch
    from torchvision import transforms as tf

    from pochitrain import training as T

    train_tf = tf.Compose([tf.RandomResizedCrop(224, scale=(0.35, 1.0)),
                           tf.RandomHorizontalFlip(), tf.ToTensor(),
                           tf.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    criterion = torch.nn.CrossEntropyLoss()
    torch.backends.cudnn.benchmark = True  # as pochi train does on CUDA
    loader = T.make_loader(folder, train_tf, batch_size=batch_size, shuffle=True,
                           num_workers=workers, device="cuda", seed=0)
    for epoch in range(2):  # the DataLoader alone (decode + augment + pin + copy), no model
        start, n = time.perf_counter(), 0
        for b in loader:
            if b.images is not None:
                b.images.to("cuda", non_blocking=True)
                n += len(b.images)
        torch.cuda.synchronize()
        LOADER_ONLY.append(n / (time.perf_counter() - start))
    log(f"DataLoader alone ({workers} workers): {', '.join(f'{v:.0f}' for v in LOADER_ONLY)} "
        "img/s per epoch")
    del loader
    for name, model in models.items():
        for mode in ("fp32", "bf16+channels_last"):
            torch.manual_seed(0)
            m = copy.deepcopy(model).cuda()
            cl = mode != "fp32"
            if cl:
                m = m.to(memory_format=torch.channels_last)
            amp = torch.bfloat16 if cl else None
            opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
            loader = T.make_loader(folder, train_tf, batch_size=batch_size, shuffle=True,
                                   num_workers=workers, device="cuda", seed=0)
            per_epoch = []
            for _ in range(epochs):
                st = T.run_epoch(m, loader, criterion, "cuda", optimizer=opt, amp_dtype=amp,
                                 channels_last=cl)
                per_epoch.append(st.images / st.seconds)
            # same loop, batches already on the GPU: the model's own training speed
            xs = [T.Batch(torch.randn(batch_size, 3, 224, 224, device="cuda"),
                          torch.randint(0, 8, (batch_size,), device="cuda"), [])
                  for _ in range(4)]
            T.run_epoch(m, xs, criterion, "cuda", optimizer=opt, amp_dtype=amp, channels_last=cl)
            st = T.run_epoch(m, xs * 5, criterion, "cuda", optimizer=opt, amp_dtype=amp,
                             channels_last=cl)
            measured = per_epoch[1:] or per_epoch
            rows.append({"model": name, "mode": mode, "loader": float(np.mean(measured)),
                         "resident": st.images / st.seconds, "acc": st.accuracy,
                         "epochs": ", ".join(f"{v:.0f}" for v in per_epoch)})
            log(f"train {name} {mode}: loader {rows[-1]['loader']:.0f} img/s "
                f"(epochs {rows[-1]['epochs']}), GPU-resident {rows[-1]['resident']:.0f} img/s")
            if cl:
                models[name] = m.to(memory_format=torch.contiguous_format).float().cpu()
            del loader


# ---- inference ------------------------------------------------------------------------------

VARIANTS = [  # (pipeline, precision, channels_last, cuda_graph)
    ("cpu", "fp32", False, False),
    ("cpu", "fp16", True, False),
    ("gpu", "fp32", False, False),
    ("gpu", "fp16", False, False),
    ("gpu", "bf16", False, False),
    ("gpu", "fp16", True, False),
    ("gpu", "bf16", True, False),
    ("gpu", "fp16", True, True),
]


def bench_inference(models: dict, folder, batch_sizes: list[int], small: int,
                    rows: list[dict]) -> None:
    from pochitrain.data import ImageFolder
    from pochitrain.inference.gpu_preprocess import GpuBatches
    from pochitrain.inference.loop import run_inference
    from pochitrain.inference.torch_runner import TorchOptions, TorchRunner
    from pochitrain.preprocess import Preprocess

    pp = Preprocess(input_size=[224, 224], resize=[256], center_crop=[224, 224])
    small_folder = ImageFolder(folder.root, folder.classes, folder.samples[::max(
        1, len(folder.samples) // small)][:small])
    for name, model in models.items():
        reference: dict = {}
        for bs in batch_sizes:
            data = small_folder if bs == 1 else folder
            for pipe, prec, cl, graph in VARIANTS:
                runner = TorchRunner(copy.deepcopy(model), "cuda", TorchOptions(prec, cl, graph))
                batches = GpuBatches(pp, "cuda") if pipe == "gpu" else None
                r = run_inference(runner, data, pp, bs, folder.classes, warmup_runs=3,
                                  progress=False, batches=batches)
                runner.close()
                preds = dict(zip(r.paths, r.preds))
                key = (bs == 1)
                if pipe == "cpu" and prec == "fp32":
                    reference[key] = preds
                ref = reference.get(key, {})
                agree = np.mean([preds[p] == ref[p] for p in preds]) if ref else float("nan")
                row = {"model": name, "batch": bs, "pipeline": pipe, "precision": prec,
                       "cl": cl, "graph": graph, "images": r.measured,
                       "skipped": len(r.skipped), "pure": r.images_per_second(r.pure_seconds),
                       "e2e": r.images_per_second(r.e2e_seconds), "agree": agree,
                       "acc": r.accuracy}
                rows.append(row)
                log(f"infer {name} bs={bs:<3} {pipe} {prec} cl={int(cl)} graph={int(graph)}: "
                    f"pure {row['pure']:8.0f}  e2e {row['e2e']:8.0f} img/s  "
                    f"agree {100 * agree:.2f}%  skipped {row['skipped']}")


def bench_input_only(folder, batch_size: int) -> None:
    """The GPU input pipeline without a model: decode alone, and decode + resize + normalize."""
    import torch

    from pochitrain.inference.gpu_preprocess import GpuBatches
    from pochitrain.preprocess import Preprocess

    pp = Preprocess(input_size=[224, 224], resize=[256], center_crop=[224, 224])
    gb = GpuBatches(pp, "cuda")
    samples = list(folder.samples)
    for _ in range(2):  # second pass counts (first: warm-up, page cache)
        start, n = time.perf_counter(), 0
        for batch, paths, *_ in gb(samples, batch_size):
            n += len(paths)
        INPUT_ONLY["decode + resize + normalize (GpuBatches)"] = n / (time.perf_counter() - start)
    datas = [p.read_bytes() for p, _ in samples if p.name[:3] != "zz_"]
    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, len(datas), batch_size):
            gb._decode_many(datas[i:i + batch_size])
        torch.cuda.synchronize()
        INPUT_ONLY["nvJPEG decode alone (one thread)"] = len(datas) / (time.perf_counter() - start)
    images = gb._decode_many(datas[:batch_size])
    out = torch.empty((len(images), 3, 224, 224), device="cuda")
    from pochitrain.inference.gpu_resize import resize_batch

    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            resize_batch(images, pp, out)
        torch.cuda.synchronize()
        INPUT_ONLY["batched resize + crop alone"] = 10 * len(images) / (time.perf_counter() - start)
    for k, v in INPUT_ONLY.items():
        log(f"input only, batch {batch_size}: {k}: {v:.0f} img/s")


def bench_digits(epochs: int, workers: int) -> None:
    """pochi train on the digits sample, same seed: mixed_precision off vs bf16."""
    from pochitrain.pipeline.sample_data import write_sample_data
    from pochitrain.pipeline.train import train

    root = Path("/tmp/pochi_digits")
    config = root / "config.py"
    if not config.exists():
        config = write_sample_data(root)
    for mp, cl in (("off", False), ("bf16", True)):
        r = train(config, overrides={"epochs": epochs, "mixed_precision": mp,
                                     "channels_last": cl, "device": "cuda",
                                     "num_workers": workers},
                  work_dir=root / "runs", progress=False)
        import csv

        with open(r.run_dir / "training_metrics.csv", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        DIGITS.append({"mode": mp + ("+channels_last" if cl else ""),
                       "val": [float(x["val_accuracy"]) for x in rows],
                       "ips": [float(x["images_per_second"]) for x in rows],
                       "best": r.best_val_accuracy, "seconds": r.seconds})
        log(f"digits {DIGITS[-1]}")


# ---- report ---------------------------------------------------------------------------------

def _env() -> dict[str, str]:
    import torch
    import torchvision

    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        driver = "?"
    return {"GPU": torch.cuda.get_device_name(0), "driver": driver or "?",
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "CUDA": str(torch.version.cuda), "cuDNN": str(torch.backends.cudnn.version()),
            "CPU cores": str(os.cpu_count()), "Python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def report(env: dict, infer_rows: list[dict], train_rows: list[dict], args) -> str:
    out = io.StringIO()
    w = out.write
    w("# GPU benchmark results\n\n")
    w("Made by `benchmarks/gpu_bench.py` in one call on the GPU machine "
      f"({args.images} generated JPEGs + 2 corrupt ones, 224x224 input: Resize(256) + "
      "CenterCrop(224), 8 classes).\n\n")
    for k, v in env.items():
        w(f"- {k}: {v}\n")
    w("\n## Inference (`run_inference` + `TorchRunner`, images/s)\n\n")
    w("pure = model call only (CUDA events); e2e = wall clock of the whole loop (read, decode, "
      "resize, copies, model, softmax). Batch 1 runs on a subset of "
      f"{args.small} images. agree = top-1 agreement with the CPU pipeline fp32 at the same "
      "batch size.\n\n")
    w("| model | batch | pipeline | precision | channels_last | CUDA graph | pure img/s | "
      "e2e img/s | e2e/pure | agree | skipped |\n|---|---:|---|---|---|---|---:|---:|---:|---:|---:|\n")
    for r in infer_rows:
        w(f"| {r['model']} | {r['batch']} | {r['pipeline']} | {r['precision']} | "
          f"{'yes' if r['cl'] else 'no'} | {'yes' if r['graph'] else 'no'} | {r['pure']:.0f} | "
          f"{r['e2e']:.0f} | {r['e2e'] / r['pure']:.2f} | {100 * r['agree']:.2f}% | "
          f"{r['skipped']} |\n")
    w("\n## Training (`training.run_epoch`, images/s)\n\n")
    w(f"batch {args.train_batch}, SGD, RandomResizedCrop(224) + flip in {args.workers} DataLoader "
      "workers (pinned memory, persistent workers). loader = mean of epochs after the first; "
      "GPU-resident = the same loop over batches already on the GPU (no decoding).\n\n")
    w("| model | mode | loader img/s | per epoch | GPU-resident img/s |\n|---|---|---:|---|---:|\n")
    for r in train_rows:
        w(f"| {r['model']} | {r['mode']} | {r['loader']:.0f} | {r['epochs']} | "
          f"{r['resident']:.0f} |\n")
    if LOADER_ONLY:
        w(f"\nDataLoader alone (same transform and workers, no model): "
          f"{', '.join(f'{v:.0f}' for v in LOADER_ONLY)} img/s per epoch.\n")
    if INPUT_ONLY:
        w("\n## GPU input pipeline alone (no model, batch 256, img/s)\n\n| stage | img/s |\n"
          "|---|---:|\n")
        for k, v in INPUT_ONLY.items():
            w(f"| {k} | {v:.0f} |\n")
    if DIGITS:
        w("\n## Digits sample: `pochi train` fp32 vs bf16 (same seed, config from "
          "`pochi sample-data`)\n\n| mixed_precision | val accuracy per epoch | best | "
          "train img/s per epoch | seconds |\n|---|---|---:|---|---:|\n")
        for d in DIGITS:
            w(f"| {d['mode']} | {', '.join(f'{100 * v:.1f}%' for v in d['val'])} | "
              f"{100 * d['best']:.2f}% | {', '.join(f'{v:.0f}' for v in d['ips'])} | "
              f"{d['seconds']:.1f} |\n")
    w("\n## Targets\n\n")
    for line in targets(infer_rows, train_rows):
        w(f"- {line}\n")
    return out.getvalue()


def _pick(rows, **kw):
    found = [r for r in rows if all(r[k] == v for k, v in kw.items())]
    return max(found, key=lambda r: r["e2e"]) if found else None


def targets(infer_rows: list[dict], train_rows: list[dict]) -> list[str]:
    lines = []
    bs = max(r["batch"] for r in infer_rows)
    model = "resnet50" if any(r["model"] == "resnet50" for r in infer_rows) else infer_rows[0]["model"]
    gpu = _pick(infer_rows, model=model, batch=bs, pipeline="gpu", precision="fp16", graph=False)
    cpu32 = _pick(infer_rows, model=model, batch=bs, pipeline="cpu", precision="fp32")
    cpu16 = _pick(infer_rows, model=model, batch=bs, pipeline="cpu", precision="fp16")
    if gpu and cpu32:
        ratio = gpu["e2e"] / gpu["pure"]
        cl = "channels_last" if gpu["cl"] else "NCHW"
        lines.append(f"{model} fp16 ({cl}) batch {bs}, GPU pipeline: e2e {gpu['e2e']:.0f} / pure "
                     f"{gpu['pure']:.0f} = **{ratio:.2f}x** (target >= 0.8x: "
                     f"{'met' if ratio >= 0.8 else 'MISSED'})")
        for base, what in ((cpu32, "fp32"), (cpu16, "fp16 + channels_last")):
            if base:
                x = gpu["e2e"] / base["e2e"]
                lines.append(f"vs the PIL + CPU-transform pipeline ({what} model, e2e "
                             f"{base['e2e']:.0f} img/s): **{x:.1f}x** (target >= 3x: "
                             f"{'met' if x >= 3 else 'MISSED'})")
    agree = [r["agree"] for r in infer_rows if r["pipeline"] == "gpu" and r["precision"] == "fp32"]
    if agree:
        lines.append(f"top-1 agreement, GPU pipeline fp32 vs CPU pipeline fp32: min "
                     f"{100 * min(agree):.2f}% over models and batch sizes (target >= 99.5%)")
    for name in sorted({r["model"] for r in train_rows}):
        a = next((r for r in train_rows if r["model"] == name and r["mode"] == "fp32"), None)
        b = next((r for r in train_rows if r["model"] == name and r["mode"] != "fp32"), None)
        if a and b:
            lines.append(f"training {name}: bf16 + channels_last / fp32 = "
                         f"**{b['loader'] / a['loader']:.2f}x** with the DataLoader, "
                         f"{b['resident'] / a['resident']:.2f}x GPU-resident (target >= 2x)")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2560, help="JPEGs to generate")
    ap.add_argument("--small", type=int, default=256, help="images for the batch-1 runs")
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50"], help="models")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32, 256], help="batches")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs per mode")
    ap.add_argument("--train-batch", type=int, default=256, help="training batch size")
    ap.add_argument("--workers", type=int, default=min(15, os.cpu_count() or 1),
                    help="DataLoader workers")
    ap.add_argument("--digits-epochs", type=int, default=6, help="digits training epochs")
    ap.add_argument("--data", default="/tmp/pochi_gpu_bench", help="image folder to write")
    ap.add_argument("--out", default="benchmarks/RESULTS.md", help="Markdown output")
    args = ap.parse_args()

    import torch

    from pochitrain.data import scan_image_folder
    from pochitrain.models import build_model

    if not torch.cuda.is_available():
        print("gpu_bench needs a CUDA GPU.", file=sys.stderr)
        return 2
    env = _env()
    log(f"{env}")
    root = Path(args.data)
    if not (root / "p0_q0" / "zz_truncated.jpg").exists():
        make_images(root, args.images)
    folder = scan_image_folder(root)
    log(f"{len(folder.samples)} files in {len(folder.classes)} classes")
    torch.manual_seed(0)
    models = {m: build_model(m, len(folder.classes)) for m in args.models}
    train_rows: list[dict] = []
    infer_rows: list[dict] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    bench_digits(args.digits_epochs, min(8, args.workers))
    bench_input_only(folder, max(args.batch_sizes))
    bench_training(models, folder, args.epochs, args.train_batch, args.workers, train_rows)
    for name in args.models:  # the report is rewritten after each model: a cut run keeps some
        bench_inference({name: models[name]}, folder, args.batch_sizes, args.small, infer_rows)
        text = report(env, infer_rows, train_rows, args)
        out.write_text(text, encoding="utf-8")
    print(text)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

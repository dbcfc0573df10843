"""Training throughput on the GPU machine: CPU DataLoader vs GPU input, 1 vs 2 GPUs (DDP).

Unattended (no downloads); about 5-8 minutes on one H200::

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 benchmarks/train_bench.py --out benchmarks/train_bench.json

Makes ~4,000 JPEGs of ~500x375 in 10 class folders (+ a validation split), then runs the real
``pochi train`` (subprocess, from this source tree) for each case and reads the run folder's
training_metrics.csv: images/s per steady epoch (mean of epochs after the first), the first
epoch's seconds, and the best val accuracy. Cases: resnet18 / resnet50 at 224, bf16 +
channels_last, cpu DataLoader vs gpu_input; with 2 visible GPUs also --gpus 2 (scaling).
Prints a Markdown table and writes a JSON.

``--transforms-only`` times the transform stage alone instead (no training): 256 decoded JPEGs
through the batched plan (``training.gpu_batch``) and the per-image path, on CUDA when there
is a GPU, else on the CPU (there it only shows the kernel-count savings).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10

CONFIG = """
from torchvision import transforms
model_name = {model!r}
train_data_root = {train!r}
val_data_root = {val!r}
epochs = {epochs}
batch_size = {batch}
learning_rate = 0.05
optimizer = "SGD"
num_workers = {workers}
gpu_input = {gpu_input!r}
seed = 0
_norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
train_transform = transforms.Compose([transforms.RandomResizedCrop(224),
                                      transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                      _norm])
val_transform = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                                    _norm])
"""


def _one(args: tuple[int, str, int]) -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    i, root, cls = args
    rng = np.random.default_rng(i)
    w, h = int(rng.integers(440, 560)), int(rng.integers(330, 420))
    base = np.array([(cls * 25) % 256, (cls * 67) % 256, (cls * 113) % 256], dtype=np.float64)
    img = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(img)
    draw = ImageDraw.Draw(im)
    for _ in range(3 + cls % 4):
        x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
        draw.ellipse((x, y, x + 40 + cls * 4, y + 40), fill=tuple(int(v) for v in 255 - base))
    im.save(Path(root) / str(cls) / f"{i:05d}.jpg", quality=90)


def make_images(root: Path, n: int, start: int = 0) -> Path:
    """``n`` images (seeds ``start`` .. ``start + n - 1``): give a validation split another
    ``start`` than its training split, or it repeats the first training images."""
    for c in range(CLASSES):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    with Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(_one, [(i, str(root), i % CLASSES) for i in range(start, start + n)],
                 chunksize=32)
    return root


def run_case(work: Path, name: str, model: str, gpu_input: bool, gpus: int, epochs: int,
             batch: int, workers: int, data: Path) -> dict[str, object]:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.py"
    config.write_text(CONFIG.format(model=model, train=str(data / "train"),
                                    val=str(data / "val"), epochs=epochs, batch=batch,
                                    workers=workers, gpu_input=gpu_input), encoding="utf-8")
    cmd = [sys.executable, "-m", "pochitrain", "train", "-c", str(config), "--quiet",
           "--work-dir", str(folder / "runs")]
    if gpus > 1:
        cmd += ["--gpus", str(gpus)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                          timeout=300)
    wall = time.perf_counter() - started
    row: dict[str, object] = {"case": name, "model": model, "gpu_input": gpu_input,
                              "gpus": gpus, "rc": proc.returncode, "wall_s": round(wall, 1)}
    runs = sorted((folder / "runs").glob("*/training_metrics.csv"))
    if proc.returncode != 0 or not runs:
        row["error"] = (proc.stderr or proc.stdout)[-1500:]
        return row
    rows = list(csv.DictReader(runs[-1].open()))
    ips = [float(r["images_per_second"]) for r in rows]
    secs = [float(r["seconds"]) for r in rows]
    row.update(per_epoch_img_s=[round(v) for v in ips],
               steady_img_s=round(sum(ips[1:]) / max(1, len(ips) - 1)) if len(ips) > 1 else None,
               first_epoch_s=secs[0], steady_epoch_s=round(sum(secs[1:]) / max(1, len(secs) - 1), 2),
               best_val_accuracy=max(float(r["val_accuracy"]) for r in rows),
               gpu_input_line=next((ln for ln in proc.stdout.splitlines()
                                    if "GPU input" in ln), ""))
    return row


TRAIN_CHAINS = {
    "train: RandomResizedCrop+flip+ToTensor+Normalize": "rrc",
    "train + ColorJitter(0.4,0.4,0.4,0.1) + RandomRotation(10)": "heavy",
    "val: Resize(256)+CenterCrop(224)+ToTensor+Normalize": "val",
}


def _chain(kind: str) -> object:
    from torchvision import transforms as T

    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    if kind == "val":
        return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])
    extra = ([T.ColorJitter(0.4, 0.4, 0.4, 0.1), T.RandomRotation(10)] if kind == "heavy"
             else [])
    return T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), *extra,
                      T.ToTensor(), norm])


def bench_transforms(folder: Path, n: int = 256, repeats: int = 3) -> list[dict[str, object]]:
    """img/s of the transform stage alone on ``n`` decoded JPEGs of ``folder``."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from pochitrain.training import gpu_batch, gpu_input

    device = "cuda" if torch.cuda.is_available() else "cpu"
    paths = sorted(folder.rglob("*.jpg"))[:n]
    data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    def timed(fn: object) -> float:
        best = float("inf")
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()  # type: ignore[operator]
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return len(images) / best

    rows = []
    for label, kind in TRAIN_CHAINS.items():
        ops, _ = gpu_input.map_transforms(_chain(kind))
        plan, why = gpu_batch.compile_chain(ops or [])
        assert plan is not None, why
        torch.manual_seed(0)
        plan(images[:8])  # first kernels / allocations
        batched = timed(lambda: plan(images))  # noqa: B023
        per_image = timed(lambda: torch.stack([gpu_input.apply(ops or [], im)  # noqa: B023
                                               for im in images]))
        row = {"chain": label, "device": device, "images": len(images),
               "batched_img_s": round(batched), "per_image_img_s": round(per_image),
               "speedup": round(batched / per_image, 2)}
        if kind == "val":
            ref = torch.stack([gpu_input.apply(ops or [], im) for im in images])
            row["val_mean_abs_diff_vs_per_image"] = float((plan(images) - ref).abs().mean())
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=min(15, (os.cpu_count() or 2) - 1))
    ap.add_argument("--work", default="/tmp/pochi_train_bench")
    ap.add_argument("--out", default="benchmarks/train_bench.json")
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--inputs", default="cpu,gpu", help="which inputs: cpu, gpu or both")
    ap.add_argument("--transforms-only", action="store_true",
                    help="time the transform stage alone (batched vs per image), no training")
    args = ap.parse_args()

    import torch

    work = Path(args.work)
    data = work / "data"
    if not (data / "train").exists():
        t0 = time.perf_counter()
        make_images(data / "train", args.images)
        make_images(data / "val", max(500, args.images // 8), start=args.images)
        print(f"made images in {time.perf_counter() - t0:.1f} s", flush=True)
    if args.transforms_only:
        sys.path.insert(0, str(ROOT))
        rows = bench_transforms(data / "train")
        Path(args.out).write_text(json.dumps({"transforms": rows}, indent=1), encoding="utf-8")
        return
    n_gpus = torch.cuda.device_count()
    results = []
    for model in args.models.split(","):
        for gpu_input in [i == "gpu" for i in args.inputs.split(",")]:
            cases = [1, 2] if gpu_input and n_gpus >= 2 else [1]
            if not gpu_input and n_gpus >= 2 and model == "resnet18":
                cases = [1, 2]
            for gpus in cases:
                name = f"{model}_{'gpu' if gpu_input else 'cpu'}_x{gpus}"
                row = run_case(work, name, model, gpu_input, gpus, args.epochs, args.batch,
                               args.workers, data)
                print(json.dumps(row), flush=True)
                results.append(row)
    print("\n| model | input | GPUs | steady img/s | per epoch img/s | first epoch s | "
          "steady epoch s | best val acc | wall s |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {'gpu' if r['gpu_input'] else 'cpu DataLoader'} | {r['gpus']} "
              f"| {r.get('steady_img_s', 'ERR')} | {r.get('per_epoch_img_s', '')} | "
              f"{r.get('first_epoch_s', '')} | {r.get('steady_epoch_s', '')} | "
              f"{r.get('best_val_accuracy', '')} | {r['wall_s']} |")
    for model in args.models.split(","):
        one = next((r for r in results if r["model"] == model and r["gpu_input"]
                    and r["gpus"] == 1), None)
        two = next((r for r in results if r["model"] == model and r["gpu_input"]
                    and r["gpus"] == 2), None)
        if one and two and one.get("steady_img_s") and two.get("steady_img_s"):
            print(f"\n{model} gpu_input DDP scaling 2 vs 1 GPU: "
                  f"{two['steady_img_s'] / one['steady_img_s']:.2f}x")  # type: ignore[operator]
    info = {"gpu": torch.cuda.get_device_name(0) if n_gpus else None, "gpus": n_gpus,
            "torch": torch.__version__, "results": results}
    Path(args.out).write_text(json.dumps(info, indent=1), encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

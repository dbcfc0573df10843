"""Validation accuracy of the GPU-input training path against the CPU DataLoader, several
seeds each, run on the CPU (issue 15: "equal to the CPU pipeline's within run-to-run noise").

The GPU-input code (``training.gpu_input``: batched decode + the transforms mapped to tensor
ops) normally runs only on CUDA; here it is forced onto CPU tensors, so what is compared is
the pipelines' arithmetic and random draws, not CUDA's numerics. Two data sets:

- ``digits``: the built-in sample (``pochi sample-data``), its config (Resize + RandomAffine),
  resnet18 at 32x32, ``--epochs`` epochs;
- ``photos``: generated JPEGs of about 500x375 in 10 classes (``train_bench.make_images``),
  RandomResizedCrop(64) + RandomHorizontalFlip for training, Resize(72) + CenterCrop(64) for
  validation, resnet18 at 64x64 (small so that the CPU can train it).

    PYTHONPATH=. python3 benchmarks/parity_cpu.py --seeds 0 1 2 --out parity.json

Prints a Markdown table (best validation accuracy per seed, mean and spread per pipeline)
and writes the rows to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PHOTO_CONFIG = """
from torchvision import transforms
model_name = "resnet18"
train_data_root = {train!r}
val_data_root = {val!r}
input_size = [64, 64]
epochs = {epochs}
batch_size = 64
learning_rate = 0.001
optimizer = "Adam"
num_workers = 0
device = "cpu"
seed = 0
_norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
train_transform = transforms.Compose([transforms.RandomResizedCrop(64),
                                      transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                      _norm])
val_transform = transforms.Compose([transforms.Resize(72), transforms.CenterCrop(64),
                                    transforms.ToTensor(), _norm])
"""


def _force_gpu_path_on_cpu() -> None:
    """Let ``gpu_loaders`` take the GPU-input path with the model on the CPU."""
    from pochitrain.training import gpu_input

    original = gpu_input.decide

    def decide(choice: object, device: str, transforms: dict[str, object]) -> tuple[bool, str]:
        if choice is True:
            return True, "forced onto the CPU (parity_cpu.py)"
        return original(choice, device, transforms)

    gpu_input.decide = decide  # type: ignore[assignment]


def _digits(root: Path, epochs: int) -> Path:
    from pochitrain.sample_data import write_digits, write_digits_config

    write_digits(root / "data")
    config = write_digits_config(root / "config.py", epochs=epochs)
    text = config.read_text(encoding="utf-8")
    text = text.replace('train_data_root = "train"',
                        f"train_data_root = {str(root / 'data' / 'train')!r}")
    text = text.replace('val_data_root = "val"', f"val_data_root = {str(root / 'data' / 'val')!r}")
    text = text.replace('device = "auto"', 'device = "cpu"')
    config.write_text(text, encoding="utf-8")
    return config


def _photos(root: Path, epochs: int, n: int) -> Path:
    from train_bench import make_images

    make_images(root / "train", n)
    make_images(root / "val", max(n // 5, 50), start=n)  # not the training images again
    config = root / "config.py"
    config.write_text(PHOTO_CONFIG.format(train=str(root / "train"), val=str(root / "val"),
                                          epochs=epochs), encoding="utf-8")
    return config


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="+", default=["digits", "photos"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--photos", type=int, default=1000, help="generated training photos")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from pochitrain.pipeline.train import train

    torch.set_num_threads(max(1, torch.get_num_threads()))
    _force_gpu_path_on_cpu()
    work = Path(tempfile.mkdtemp(prefix="pochi_parity_"))
    rows = []
    for name in args.sets:
        config = (_digits(work / name, args.epochs) if name == "digits"
                  else _photos(work / name, args.epochs, args.photos))
        for seed in args.seeds:
            for pipeline, gpu_input in (("CPU DataLoader", False), ("GPU-input path", True)):
                started = time.perf_counter()
                result = train(config, overrides={"seed": seed, "gpu_input": gpu_input},
                               work_dir=work / name / "runs", progress=False)
                rows.append({"set": name, "seed": seed, "pipeline": pipeline,
                             "best_val_accuracy": result.best_val_accuracy,
                             "seconds": round(time.perf_counter() - started, 1)})
                print(json.dumps(rows[-1]), flush=True)
    print("\n| set | pipeline | best val accuracy per seed | mean | spread |")
    print("|---|---|---|---:|---:|")
    for name in args.sets:
        for pipeline in ("CPU DataLoader", "GPU-input path"):
            accs = [r["best_val_accuracy"] for r in rows
                    if r["set"] == name and r["pipeline"] == pipeline]
            print(f"| {name} | {pipeline} | {', '.join(f'{a:.4f}' for a in accs)} | "
                  f"{statistics.mean(accs):.4f} | {max(accs) - min(accs):.4f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

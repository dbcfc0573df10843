"""Built-in sample data: scikit-learn's handwritten digits as RGB PNG image folders.

No download: the 1,797 8x8 digits ship inside scikit-learn. Each is upscaled to 32x32 and
written as an RGB PNG; the train/val split is stratified and seeded, so the output is the same
on every machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pochitrain.errors import DataError

SAMPLE_SIZE = 32
CLASS_NAMES = [str(d) for d in range(10)]


def write_digits(out_dir: Path | str, val_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
    """Write ``out_dir/{train,val}/<digit>/NNNN.png``; return image counts per split."""
    from sklearn.datasets import load_digits

    out_dir = Path(out_dir)
    for split in ("train", "val"):
        if (out_dir / split).exists() and any((out_dir / split).iterdir()):
            raise DataError(
                "指定したフォルダは空ではありません\n"
                f"{out_dir / split} already exists and is not empty.",
                "Choose a new folder for the sample data (existing files are never overwritten).",
            )
    digits = load_digits()
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "val": 0}
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        idx = idx[rng.permutation(len(idx))]
        n_val = round(len(idx) * val_fraction)
        for split, part in (("val", idx[:n_val]), ("train", idx[n_val:])):
            folder = out_dir / split / CLASS_NAMES[label]
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                pixels = (digits.images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
                img = Image.fromarray(pixels, mode="L").resize(
                    (SAMPLE_SIZE, SAMPLE_SIZE), Image.Resampling.BICUBIC
                )
                img.convert("RGB").save(folder / f"{int(i):04d}.png")
                counts[split] += 1
    return counts


# The ready config written beside the digits (`pochi sample-data DIR` -> DIR/config.py).
# Relative paths in a config are also found from the config's folder, so DIR can be moved.
DIGITS_CONFIG = '''\
"""pochitrain config for the built-in digits sample (written by 'pochi sample-data').

Train with:  pochi train -c {config_name}
Every key is explained in configs/pochi_train_config.py of the pochitrain repository.
"""

from torchvision import transforms

model_name = "resnet18"
num_classes = 10  # digits 0-9 (None would infer it from train/)
device = "auto"  # CUDA when available, else CPU
pretrained = False  # the digits need no ImageNet weights

# Relative paths: from this file's folder (or the working directory when only it has them).
train_data_root = "train"
val_data_root = "val"
work_dir = "work_dirs"

input_size = [32, 32]  # [height, width] of the model input
epochs = {epochs}
batch_size = {batch_size}
learning_rate = {learning_rate}
optimizer = "Adam"
scheduler = "CosineAnnealingLR"
scheduler_params = {{}}  # T_max defaults to epochs (also when --epochs overrides it)
early_stopping = None
class_weights = None
num_workers = 0
seed = 42

_mean = [0.5, 0.5, 0.5]
_std = [0.5, 0.5, 0.5]
train_transform = transforms.Compose([
    transforms.Resize((32, 32)),  # any image size works: every tensor of a batch is 32x32
    transforms.RandomAffine(degrees=8, translate=(0.08, 0.08)),
    transforms.ToTensor(),
    transforms.Normalize(_mean, _std),
])
val_transform = transforms.Compose([
    transforms.Resize((32, 32)),
    transforms.ToTensor(),
    transforms.Normalize(_mean, _std),
])
'''
# Short enough for a CPU, long enough for a useful accuracy (see docs/benchmarks.md).
DIGITS_TRAINING = {"epochs": 6, "batch_size": 64, "learning_rate": 0.001}


def write_digits_config(path: Path | str, **overrides: object) -> Path:
    """Write the digits config (DIGITS_TRAINING values, optionally overridden) to ``path``."""
    from pochitrain.workspace import atomic_write_text

    path = Path(path)
    values = {**DIGITS_TRAINING, **overrides}
    atomic_write_text(path, DIGITS_CONFIG.format(config_name=path.name, **values))
    return path

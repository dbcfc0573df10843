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

"""A tiny training set and config shared by the training tests: 3 digit classes, a few
32x32 images each, so a whole epoch takes well under a second."""

from __future__ import annotations

import shutil
from pathlib import Path

TINY_CONFIG = """
from torchvision import transforms
model_name = "resnet18"
train_data_root = {train!r}
val_data_root = {val!r}
epochs = {epochs}
batch_size = 8
learning_rate = 0.001
device = "cpu"
_norm = transforms.Normalize([0.5] * 3, [0.5] * 3)
val_transform = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(), _norm])
"""


def copy_tiny(digits: Path, root: Path, train: int = 6, val: int = 3) -> Path:
    """``root/{train,val}/{0,1,2}/*.png``: the first ``train`` / ``val`` digits per class."""
    for split, n in (("train", train), ("val", val)):
        for cls in ("0", "1", "2"):
            (root / split / cls).mkdir(parents=True)
            for f in sorted((digits / split / cls).glob("*.png"))[:n]:
                shutil.copy(f, root / split / cls / f.name)
    return root


def tiny_config(folder: Path, data: Path, epochs: int = 1, extra: str = "",
                train: Path | None = None, val: Path | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.py"
    path.write_text(TINY_CONFIG.format(train=str(train or data / "train"),
                                       val=str(val or data / "val"), epochs=epochs) + extra,
                    encoding="utf-8")
    return path

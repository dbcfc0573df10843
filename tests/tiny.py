"""Tiny training sets and configs shared by the training tests: 3 digit classes, a few
32x32 images each, so a whole epoch takes well under a second; and the original
pochitrain's sample config written for such a set."""

from __future__ import annotations

import shutil
from pathlib import Path

# the smallest model of the registry: its checkpoints (weights and Adam's state) are a seventh
# of resnet18's, and a step on the CPU is quicker
TINY_MODEL = "mobilenet_v3_small"

TINY_CONFIG = """
from torchvision import transforms
model_name = {model!r}
train_data_root = {train!r}
val_data_root = {val!r}
epochs = {epochs}
batch_size = 8
learning_rate = 0.001
device = "cpu"
_norm = transforms.Normalize([0.5] * 3, [0.5] * 3)
val_transform = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(), _norm])
"""

# a random train transform for TINY_CONFIG (``tiny_config(extra=AUGMENT_FLIP)``)
AUGMENT_FLIP = ("train_transform = transforms.Compose([transforms.Resize((32, 32)), "
                "transforms.RandomHorizontalFlip(), transforms.ToTensor(), _norm])\n")

# 3 classes, 16x16 images: one epoch of resnet18 on 12 images takes well under a second idle.
OPTUNA_CONFIG = """
from torchvision import transforms
model_name = "resnet18"
train_data_root = {train!r}
val_data_root = {val!r}
epochs = 3
batch_size = 4
learning_rate = 0.001
device = "cpu"
_norm = transforms.Normalize([0.5] * 3, [0.5] * 3)
val_transform = transforms.Compose([transforms.Resize((16, 16)), transforms.ToTensor(), _norm])
enable_metrics_export = False  # no per-epoch plots in the trials
optuna = {optuna}
"""


def optuna_config(folder: Path, data: Path, optuna: dict) -> Path:
    """``folder/config.py``: ``OPTUNA_CONFIG`` on ``data`` with the ``optuna`` dict."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.py"
    path.write_text(OPTUNA_CONFIG.format(train=str(data / "train"), val=str(data / "val"),
                                         optuna=repr(optuna)), encoding="utf-8")
    return path


def copy_tiny(digits: Path, root: Path, train: int = 6, val: int = 3) -> Path:
    """``root/{train,val}/{0,1,2}/*.png``: the first ``train`` / ``val`` digits per class."""
    for split, n in (("train", train), ("val", val)):
        for cls in ("0", "1", "2"):
            (root / split / cls).mkdir(parents=True)
            for f in sorted((digits / split / cls).glob("*.png"))[:n]:
                shutil.copy(f, root / split / cls / f.name)
    return root


def tiny_config(folder: Path, data: Path, epochs: int = 1, extra: str = "",
                train: Path | None = None, val: Path | None = None,
                model: str = TINY_MODEL) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.py"
    path.write_text(TINY_CONFIG.format(train=str(train or data / "train"),
                                       val=str(val or data / "val"), epochs=epochs,
                                       model=model) + extra,
                    encoding="utf-8")
    return path


# The keys of the original's sample config (reference 2.2), written here from that list.
ORIGINAL_CONFIG = '''
import torchvision.transforms as transforms
model_name = "resnet18"
num_classes = 3
pretrained = False
train_data_root = {train!r}
val_data_root = {val!r}
batch_size = 4
num_workers = 0
train_pin_memory = True
infer_pin_memory = True
gpu_non_blocking = True
epochs = {epochs}
learning_rate = 0.001
optimizer = "SGD"
scheduler = "ExponentialLR"
scheduler_params = {{"gamma": 0.95}}
class_weights = None
work_dir = {work!r}
device = "cpu"
cudnn_benchmark = False
enable_metrics_export = True
enable_tensorboard = {tensorboard}
enable_gradient_tracking = True
gradient_tracking_config = {{
    "record_frequency": 1,
    "exclude_patterns": ["fc\\\\.", "\\\\.bias"],
    "group_by_block": True,
    "aggregation_method": "median",
}}
early_stopping = {{"enabled": False, "patience": 30, "min_delta": 3.0, "monitor": "val_accuracy"}}
enable_layer_wise_lr = True
layer_wise_lr_config = {{
    "layer_rates": {{"conv1": 0.0001, "bn1": 0.0001, "layer1": 0.0002, "layer2": 0.0005,
                    "layer3": 0.001, "layer4": 0.002, "fc": 0.01}},
    "graph_config": {{"use_log_scale": True}},
}}
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
train_transform = transforms.Compose([transforms.ToTensor(),
                                      transforms.Normalize(mean=mean, std=std)])
val_transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize(mean=mean, std=std)])
confusion_matrix_config = {{
    "title": "混同行列", "xlabel": "予測ラベル", "ylabel": "実際ラベル", "fontsize": 14,
    "title_fontsize": 16, "label_fontsize": 12, "figsize": (8, 6), "cmap": "Blues",
}}
optuna = {{
    "study_name": "pochitrain_optimization", "direction": "maximize", "n_trials": 20,
    "n_jobs": 1, "sampler": "TPESampler", "pruner": "MedianPruner", "optuna_epochs": 10,
    "storage": None,
    "search_space": {{
        "learning_rate": {{"type": "float", "low": 1e-5, "high": 1e-1, "log": True}},
        "batch_size": {{"type": "categorical", "choices": [16, 32]}},
        "optimizer": {{"type": "categorical", "choices": ["SGD", "Adam", "AdamW"]}},
    }},
}}
'''


def original_config(folder: Path, data: Path, epochs: int = 1, tensorboard: bool = False,
                    **replace: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = ORIGINAL_CONFIG.format(train=str(data / "train"), val=str(data / "val"),
                                  work=str(folder / "work_dirs"), epochs=epochs,
                                  tensorboard=tensorboard)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path = folder / "config.py"
    path.write_text(text, encoding="utf-8")
    return path

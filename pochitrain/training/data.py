"""Training data: a dataset that skips undecodable files, its collate, loaders, seeding."""

from __future__ import annotations

import random
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pochitrain.config_checks import check_training_batch
from pochitrain.data import ImageFolder, open_rgb
from pochitrain.errors import DataError


class TransformError(DataError):
    """A config transform raised on an image. A DataLoader worker's error comes back
    re-created from its traceback text ("Caught TransformError in DataLoader worker process
    0. Original Traceback ..."): this error then keeps only its own lines."""

    def __init__(self, message: str, remedy: str | None = None) -> None:
        marker = f"{__name__}.{type(self).__name__}: "
        if remedy is None and "Original Traceback" in message and marker in message:
            lines = message.rsplit(marker, 1)[1].strip().split("\n")
            message, remedy = "\n".join(lines[:2]), "\n".join(lines[2:]) or None
        super().__init__(message, remedy)


def apply_transform(transform: Callable[[Any], Any], image: Any, path: Path, name: str) -> Any:
    """``transform(image)``; an exception inside it becomes a TransformError naming the
    transform, the file and the exception, instead of a long traceback through the loader."""
    try:
        return transform(image)
    except Exception as exc:  # noqa: BLE001 - any error of the user's code
        said = (str(exc).strip().splitlines() or [""])[0][:300]
        raise TransformError(
            f"{name} が画像の変換中にエラーになりました\n"
            f"{name} failed on the image {path}: {type(exc).__name__}: {said}",
            f"Fix {name} in the config; to reproduce, call it on that image: "
            f"{name}(PIL.Image.open(path).convert('RGB')).") from None


class ImageDataset(Dataset):
    """``(tensor, label, index, path)``; tensor is None when the file cannot be decoded.
    ``name``: the transform's config key, for the error when it fails on an image."""

    def __init__(self, folder: ImageFolder, transform: Callable[[Any], Any],
                 name: str = "the transform") -> None:
        self.samples = folder.samples
        self.transform = transform
        self.name = name

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int, int, Path]:
        path, label = self.samples[index]
        image = open_rgb(path)
        tensor = None if image is None else apply_transform(self.transform, image, path,
                                                            self.name)
        return tensor, label, index, path


@dataclass
class Batch:
    images: torch.Tensor | None
    labels: torch.Tensor | None
    skipped: list[int]  # dataset indices of undecodable files


def collate_skipping(items: list[tuple[Any, ...]]) -> Batch:
    """Items ``(tensor or None, label, index[, path])`` -> one Batch; undecodable files are
    listed in ``skipped``. Tensors of different shapes are a DataError naming one file."""
    good = [(x, y) for x, y, *_ in items if x is not None]
    skipped = [i for x, _, i, *_ in items if x is None]
    if not good:
        return Batch(None, None, skipped)
    shapes = [tuple(x.shape) for x, _ in good]
    if len(set(shapes)) > 1:
        common = Counter(shapes).most_common(1)[0][0]
        odd = next(item for item in items if item[0] is not None
                   and tuple(item[0].shape) != common)
        name = str(odd[3]) if len(odd) > 3 else f"dataset item {odd[2]}"
        raise DataError(
            "1 つのバッチの画像のサイズが変換後にそろっていません\n"
            f"Images of one batch have different sizes after the transform: {name} gives a "
            f"tensor of shape {tuple(odd[0].shape)}, other images {common}.",
            "Add transforms.Resize((H, W)) to the config's train_transform (and val_transform) "
            "so that every image has the same size, e.g. the model's input_size.")
    return Batch(torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), skipped)


def _init_worker(worker_id: int) -> None:
    """DataLoader worker: leave Ctrl+C to the main process (which stops after the current
    batch), and seed NumPy from the worker's torch seed for reproducible augmentation."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    np.random.seed(torch.initial_seed() % 2**32)


def val_batch_size(batch_size: int) -> int:
    """Validation's batch: 4x the training batch, at most 256 (the training batch itself when
    that is larger). Without a backward pass it keeps no activations, so it needs less memory
    than a training step; larger batches spend less host time per image. In eval mode each
    image's result does not depend on its batch (BatchNorm uses its running statistics)."""
    return max(batch_size, min(4 * batch_size, 256))


def lone_last_image(n: int, batch_size: int) -> bool:
    """Whether an epoch of ``n`` images would end with a batch of one, which BatchNorm cannot
    train on ("Expected more than 1 value per channel"): the training loaders drop it (a
    different image each epoch, as they shuffle)."""
    return n > batch_size and n % batch_size == 1


def make_loader(folder: ImageFolder, transform: Callable[[Any], Any], *, batch_size: int,
                shuffle: bool, num_workers: int, device: str, seed: int | None,
                pin_memory: bool | None = None, balanced: bool = False) -> DataLoader:
    """``pin_memory``: None pins on CUDA; False (config train_pin_memory) turns it off.
    A training (``shuffle``) batch of one image is refused: BatchNorm cannot train on it.
    ``balanced`` (config sampler = "balanced"): each epoch draws as many images as the folder
    holds, every class equally likely (with replacement)."""
    if shuffle:
        check_training_batch(batch_size)
    generator = seeded_generator(seed)
    sampler = balanced_sampler(folder, generator) if balanced else None
    return DataLoader(
        ImageDataset(folder, transform, "train_transform" if shuffle else "val_transform"),
        batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        drop_last=shuffle and lone_last_image(len(folder.samples), batch_size),
        num_workers=num_workers, collate_fn=collate_skipping, generator=generator,
        pin_memory=device.startswith("cuda") and pin_memory is not False,
        persistent_workers=num_workers > 0,
        worker_init_fn=_init_worker if num_workers > 0 else None,
    )


def balanced_sampler(folder: ImageFolder, generator: torch.Generator
                     ) -> torch.utils.data.WeightedRandomSampler:
    """Weights 1 / (images of the class): every class is drawn equally often."""
    labels = [label for _, label in folder.samples]
    counts = Counter(labels)
    weights = [1.0 / counts[label] for label in labels]
    return torch.utils.data.WeightedRandomSampler(weights, len(labels), replacement=True,
                                                  generator=generator)


def seeded_generator(seed: int | None) -> torch.Generator:
    """A generator of its own for a loader's shuffling, seeded when ``seed`` is given."""
    return torch.Generator() if seed is None else torch.Generator().manual_seed(seed)


def seed_everything(seed: int | None) -> None:
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

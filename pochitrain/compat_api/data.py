"""The original's ``create_data_loaders``, and what the original API's trainer and predictor
share: loaders of ``(images, labels)`` pairs seen as the training loop's batches, checkpoint
metadata read from those loaders, and settings from a config."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pochitrain.arguments import argument_error, count_argument
from pochitrain.errors import ConfigError, DataError, ShapeError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader

    from pochitrain.config import Settings
    from pochitrain.data import ImageFolder
    from pochitrain.meta import ModelMeta


class FolderDataset:
    """``root/<class>/<image>`` as ``(transform(image), label)`` pairs (the original's
    ``PochiImageDataset``); without a transform, images become tensors (``ToTensor``)."""

    def __init__(self, folder: ImageFolder, transform: Callable[[Any], Any] | None,
                 name: str = "the transform") -> None:
        if transform is None:
            from torchvision.transforms import ToTensor

            transform = ToTensor()
        self.root = folder.root
        self.classes = list(folder.classes)
        self.samples = folder.samples
        self.transform = transform
        self.name = name  # for the error when the transform fails on an image

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from pochitrain.data import open_rgb
        from pochitrain.training.data import apply_transform

        path, label = self.samples[index]
        image = open_rgb(path)
        if image is None:
            raise DataError(f"画像を読み込めません: {path}\nCannot decode the image {path}.",
                            "Remove or replace the file.")
        return apply_transform(self.transform, image, path, self.name), label

    def get_classes(self) -> list[str]:
        return list(self.classes)


def _collate(items: list[tuple[Any, int]]) -> Any:
    """The default collate, with a clear error when images differ in size."""
    from torch.utils.data import default_collate

    shapes = {tuple(getattr(x, "shape", ())) for x, _ in items}
    if len(shapes) > 1:
        raise DataError(
            f"バッチ内の画像サイズが異なります: {sorted(shapes)}\n"
            f"Images of one batch have different sizes after the transform: {sorted(shapes)}.",
            "Add transforms.Resize((H, W)) to train_transform and val_transform.")
    return default_collate(items)


def create_data_loaders(
    train_root: str | Path, val_root: str | Path, batch_size: int = 32, num_workers: int = 4,
    pin_memory: bool = True, train_transform: Callable[[Any], Any] | None = None,
    val_transform: Callable[[Any], Any] | None = None,
) -> tuple[DataLoader, DataLoader, list[str]]:
    """(train loader, val loader, class names): batches are ``(images, labels)`` tensors.

    Class names are the sorted class sub-folders of ``train_root``; ``val_root`` may hold
    some or all of them (labels follow the training classes by name).
    """
    import torch

    from pochitrain.data import check_classes, remap_labels, scan_image_folder
    from pochitrain.training.data import lone_last_image

    batch_size = count_argument("batch_size", batch_size)
    num_workers = count_argument("num_workers", num_workers, 0)
    pin_memory = flag_argument("pin_memory", pin_memory)
    for name, root in (("train_root", train_root), ("val_root", val_root)):
        if isinstance(root, bool) or not isinstance(root, (str, os.PathLike)):
            raise argument_error(name, root, "a folder path (str or pathlib.Path)",
                                 "'data/train'")
    for name, transform in (("train_transform", train_transform),
                            ("val_transform", val_transform)):
        if transform is not None and not callable(transform):
            raise argument_error(name, transform, "a transform (a callable) or None",
                                 "transforms.Compose([...])")
    train = scan_image_folder(train_root, "training data folder (train_root)",
                              allow_unlabelled=False)
    val = scan_image_folder(val_root, "validation data folder (val_root)",
                            allow_unlabelled=False)
    check_classes(val, train.classes, for_training=True)
    val = remap_labels(val, train.classes)
    pin = pin_memory and torch.cuda.is_available()

    def loader(folder: ImageFolder, transform: Any, shuffle: bool) -> DataLoader:
        n = len(folder.samples)  # BatchNorm cannot train on a last batch of one image
        name = "train_transform" if shuffle else "val_transform"
        return _loader_class()(FolderDataset(folder, transform, name),  # type: ignore[arg-type]
                          batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                          pin_memory=pin, collate_fn=_collate,
                          drop_last=shuffle and lone_last_image(n, batch_size))

    return (loader(train, train_transform, True), loader(val, val_transform, False),
            list(train.classes))


@functools.cache
def _loader_class() -> type[DataLoader]:
    """A DataLoader whose iteration passes a worker's error on without the frames that would
    keep its worker processes alive until a garbage collection (``drop_error_frames``): a
    script that handles the error goes on, and ends, without waiting for them. Made on first
    use, where torch is imported; pickle finds it as this module's ``ErrorSafeLoader``."""
    from torch.utils.data import DataLoader

    from pochitrain.training.epoch import drop_error_frames

    class ErrorSafeLoader(DataLoader):
        def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
            return drop_error_frames(super().__iter__())

    ErrorSafeLoader.__module__, ErrorSafeLoader.__qualname__ = __name__, "ErrorSafeLoader"
    return ErrorSafeLoader


def __getattr__(name: str) -> Any:
    if name == "ErrorSafeLoader":  # made on first use: importing this module imports no torch
        return _loader_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TrainingBatches:
    """A loader of ``(images, labels)`` pairs seen as the training loop's ``Batch`` items."""

    def __init__(self, loader: Any, num_classes: int) -> None:
        self.loader = loader
        self.num_classes = num_classes
        self.dataset = loader.dataset
        self.batch_size = getattr(loader, "batch_size", None)
        self.sampler = getattr(loader, "sampler", None)
        self.drop_last = getattr(loader, "drop_last", False)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        from pochitrain.training import Batch

        for item in self.loader:
            batch = item if isinstance(item, Batch) else Batch(*pair(item), [])
            check_images(batch.images)
            check_labels(batch.labels, self.num_classes)
            yield batch


def pair(item: Any) -> tuple[Any, Any]:
    """(images, labels) of a loader item; ShapeError for anything else."""
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise _not_batches(f"an item of type {type(item).__name__}")


def check_images(images: Any) -> Any:
    """A batch of images: a (N, 3, H, W) tensor or array; ShapeError else."""
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) != 4 or shape[1] != 3:
        got = f"shape {shape}" if shape else f"type {type(images).__name__}"
        raise _not_batches(f"images of {got}")
    return images


def check_labels(labels: Any, num_classes: int) -> None:
    """Class ids 0 .. num_classes - 1 (CrossEntropy's IndexError names no file or class)."""
    if getattr(labels, "numel", lambda: 0)() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise DataError(f"ラベル {bad} がクラス数 {num_classes} の範囲外です\n"
                        f"A batch holds label {bad}, outside 0..{num_classes - 1} for "
                        f"{num_classes} classes.",
                        "Give the trainer the dataset's class count (num_classes), or fix "
                        "the dataset's labels.")


def _not_batches(got: str) -> ShapeError:
    return ShapeError("ローダーのバッチは (画像, ラベル) の組にしてください\n"
                      f"The loader gives {got}: batches must be (images, labels) pairs with "
                      "images of shape (N, 3, H, W).",
                      "Use a torch DataLoader over a dataset of (image tensor, label) items, "
                      "e.g. the ones create_data_loaders returns.")


def flag_argument(name: str, value: Any) -> bool:
    """A True / False argument; a str such as "no" would count as true."""
    if not isinstance(value, bool):
        raise argument_error(name, value, "True or False", "False")
    return value


def check_loader(name: str, loader: Any) -> None:
    """A DataLoader-like argument: iterable, with a ``dataset``."""
    if not hasattr(loader, "dataset") or not hasattr(loader, "__iter__"):
        raise argument_error(name, loader, "a torch DataLoader of (images, labels) batches",
                             "the loader create_data_loaders returns")


def batch_images(item: Any) -> Any:
    """The image tensor of a loader item: a ``Batch`` or an ``(images, labels)`` pair (or a
    bare tensor of images)."""
    if isinstance(item, (tuple, list)) and item:
        item = item[0]
    return getattr(item, "images", item)


# ---- checkpoint metadata from the loaders ------------------------------------------------


def loader_meta(model_name: str, num_classes: int, train_loader: Any,
                val_loader: Any) -> ModelMeta | None:
    """Metadata for the checkpoints: class names from the training dataset (else "0".."N-1"),
    preprocessing from the validation dataset's transform; None when that transform cannot be
    described as data (the checkpoints are then written in the original's format)."""
    from pochitrain.console import warn
    from pochitrain.meta import ModelMeta
    from pochitrain.preprocess import from_transform

    names = [str(c) for c in getattr(train_loader.dataset, "classes", None) or []]
    if len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    dataset = val_loader.dataset
    try:
        hw = [int(v) for v in dataset[0][0].shape[-2:]]
        pre = from_transform(getattr(dataset, "transform", None), input_size=hw)
    except (ConfigError, TypeError, AttributeError, IndexError) as exc:
        warn("val_transform を前処理メタデータにできないため、元の形式で保存します / the "
             f"validation transform cannot be recorded ({exc}); checkpoints are written in "
             "the original's format (pass -c CONFIG when using them).")
        return None
    return ModelMeta(names, pre, model_name=model_name, source={"api": "PochiTrainer"})


def weights_payload(model: torch.nn.Module, meta: ModelMeta | None,
                    extra: dict[str, Any]) -> dict[str, Any]:
    """Our checkpoint's content (weights + metadata), or the original's dict when ``meta`` is
    None; a ``checkpoint.snapshot``, for ``checkpoint.write_checkpoint``."""
    from pochitrain.checkpoint import checkpoint_payload, snapshot

    if meta is not None:
        return checkpoint_payload(model, meta, extra)
    return {"model_state_dict": snapshot(model.state_dict()), **snapshot(extra)}


def settings_of(config: Settings | str | Path) -> Settings:
    """``Settings`` as given, or loaded from a config file."""
    from pochitrain.config import Settings, load_config

    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    if not isinstance(config, Settings):
        raise argument_error("config", config, "a config file path or its loaded Settings",
                             "'configs/pochi_train_config.py'")
    return config


def num_classes_of(settings: Settings) -> int:
    if settings.num_classes is None:
        raise ConfigError("config に num_classes がありません。\n"
                          f"num_classes is not set in {settings.config_path}.",
                          "Add num_classes = N (the number of class folders).")
    return int(settings.num_classes)

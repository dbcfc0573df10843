"""The original's ``PochiPredictor``: a trained .pth predicting over a DataLoader.

Our checkpoints open through the model facade (the runner and class names ``pochi infer``
uses); the original's checkpoints, which carry no metadata, are built from ``model_name`` and
``num_classes`` as the original built them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pochitrain.arguments import count_argument, file_argument, str_argument
from pochitrain.compat_api.data import (
    batch_images,
    check_images,
    check_loader,
    num_classes_of,
    settings_of,
)
from pochitrain.errors import DataError, ModelFileError, ShapeError, UsageError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader

    from pochitrain.config import Settings
    from pochitrain.inference.runner import Runner

WARMUP_ITERATIONS = 10  # the original's warm-up calls before predict measures


def _open_runner(model_name: str, num_classes: int, device: str,
                 path: Path) -> tuple[Runner, dict[str, Any], list[str]]:
    """(runner, checkpoint dict, class names) of a .pth: ours through the model facade (its
    metadata must name the same network), the original's from ``model_name`` and
    ``num_classes`` (it carries no metadata)."""
    from pochitrain.checkpoint import OriginalCheckpointError, model_with_weights, read_checkpoint

    try:
        payload, meta = read_checkpoint(path)
    except OriginalCheckpointError as exc:
        from pochitrain.inference.torch_runner import TorchRunner

        model, problem = model_with_weights(model_name, num_classes, exc.checkpoint.state_dict)
        if problem is not None:
            raise ModelFileError(
                f"チェックポイントの重みが {model_name} ({num_classes} クラス) と一致しません。\n"
                f"The weights in {path} do not fit {model_name} with {num_classes} classes: "
                f"{problem}.", "Pass the model_name and num_classes it was trained with.",
            ) from None
        stats = {"epoch": exc.checkpoint.epoch, "best_accuracy": exc.checkpoint.best_accuracy}
        return TorchRunner(model, device), stats, [str(i) for i in range(num_classes)]
    if (meta.model_name, meta.num_classes) != (model_name, num_classes):
        raise ModelFileError(
            f"チェックポイントは {meta.model_name} ({meta.num_classes} クラス) です。\n"
            f"{path} holds {meta.model_name} with {meta.num_classes} classes, not "
            f"{model_name} with {num_classes}.",
            f"Pass model_name={meta.model_name!r}, num_classes={meta.num_classes}.")
    from pochitrain.model import open_model

    opened = open_model(path, device=device)
    return opened.runner, payload, opened.class_names


def _percent(payload: dict[str, Any]) -> float:
    """The checkpoint's best accuracy in percent (ours record val_accuracy as a fraction)."""
    if isinstance(payload.get("best_accuracy"), (int, float)):
        return float(payload["best_accuracy"])
    value = payload.get("val_accuracy")
    return float(value) * 100.0 if isinstance(value, (int, float)) else 0.0


class PochiPredictor:
    """A trained .pth for predicting over a DataLoader (the original's ``PochiPredictor``).

    ``predict(loader)`` -> ``(predicted class ids, confidences, metrics)``; metrics hold
    ``avg_time_per_image`` (ms, model calls only), ``total_samples`` (measured) and
    ``warmup_samples`` (the first batch, not measured), as in the original.
    """

    def __init__(self, model_name: str, num_classes: int, device: str,
                 model_path: str | Path) -> None:
        import torch

        from pochitrain.config import resolve_device

        self.model_name = str_argument("model_name", model_name, "'resnet18'")
        self.num_classes = num_classes = count_argument("num_classes", num_classes)
        device = str_argument("device", device, "'cpu' (or 'cuda', 'auto')")
        self.model_path = file_argument("model_path", model_path, "'models/best_epoch10.pth'")
        self._closed = False
        if not self.model_path.is_file():
            raise ModelFileError(f"モデルファイルが見つかりません: {self.model_path}\n"
                                 f"Model file not found: {self.model_path}", "Check the path.")
        resolved = resolve_device(device)
        self.device = torch.device(resolved)
        self._runner, payload, self.class_names = _open_runner(model_name, num_classes,
                                                               resolved, self.model_path)
        self.model = getattr(self._runner, "model", None)
        self.best_accuracy = _percent(payload)
        self.epoch = int(payload.get("epoch") or 0)

    @classmethod
    def from_config(cls, config: Settings | str | Path, model_path: str | Path
                    ) -> PochiPredictor:
        settings = settings_of(config)
        return cls(settings.model_name, num_classes_of(settings), settings.device, model_path)

    def _logits(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, float]:
        if self._closed:
            raise UsageError("この PochiPredictor は閉じられています\n"
                             "This PochiPredictor is closed (close() was called or its "
                             "with-block ended): it cannot run the model any more.",
                             "Create a new PochiPredictor to predict again.")
        array = check_images(images.detach().cpu().numpy() if hasattr(images, "detach")
                             else images)
        try:
            return self._runner.run(np.ascontiguousarray(array, dtype=np.float32))
        except (TypeError, ValueError) as exc:  # e.g. an object array
            raise ShapeError("画像を float32 の配列にできません\n"
                             f"The loader's images cannot be run as float32: {exc}",
                             "Give the loader a transform ending in ToTensor().") from None

    def predict(self, data_loader: DataLoader[Any]
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """(predicted ids (int64), confidences (float32), metrics) for every image, in order."""
        import torch

        from pochitrain.batching import softmax

        check_loader("data_loader", data_loader)
        if len(data_loader.dataset) == 0:  # type: ignore[arg-type]
            raise DataError("data_loader に画像がありません\n"
                            "data_loader has no images to predict.",
                            "Pass a loader over a folder with images.")
        first = batch_images(data_loader.dataset[0])
        first = first[None] if hasattr(first, "shape") else first  # else a ShapeError
        for _ in range(WARMUP_ITERATIONS):
            self._logits(first)
        rows: list[np.ndarray] = []
        measured, warmup, seconds = 0, 0, 0.0
        for index, item in enumerate(data_loader):
            logits, pure = self._logits(batch_images(item))
            if index == 0:
                warmup = len(logits)
            else:
                measured, seconds = measured + len(logits), seconds + pure
            rows.append(softmax(logits))
        probs = np.concatenate(rows) if rows else np.zeros((0, 1))
        metrics = {"avg_time_per_image": seconds * 1000.0 / measured if measured else 0.0,
                   "total_samples": measured, "warmup_samples": warmup}
        return (torch.from_numpy(probs.argmax(axis=1).astype(np.int64)),
                torch.from_numpy(probs.max(axis=1).astype(np.float32)), metrics)

    def get_model_info(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "num_classes": self.num_classes,
                "device": str(self.device), "model_path": str(self.model_path),
                "best_accuracy": self.best_accuracy, "epoch": self.epoch}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._runner.close()

    def __enter__(self) -> PochiPredictor:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

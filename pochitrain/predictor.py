"""``Predictor``: classify images from Python with any model file pochitrain makes.

    from pochitrain import Predictor

    with Predictor("work_dirs/20261128_001/models/best_epoch6.onnx") as p:
        top = p.predict("photo.jpg", top_k=3)
        print(top.class_name, top.probability, top.top_k)

It opens the model through the model facade (``pochitrain.model``) as ``pochi infer`` does
(same runners, metadata and preprocessing), so a prediction here equals the row of
``pochi infer``'s CSV for that image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pochitrain.errors import DataError, UsageError

if TYPE_CHECKING:
    from pochitrain.meta import ModelMeta

ImageLike = Any  # a PIL image, an HxWx3 (RGB) or HxW uint8 NumPy array, or a file path


@dataclass
class Prediction:
    class_name: str
    index: int
    probability: float
    top_k: list[tuple[str, float]]  # best first; its length is the top_k asked for

    def to_dict(self) -> dict[str, Any]:
        return {"class_name": self.class_name, "class_id": self.index,
                "confidence": self.probability,
                "top_k": [{"class_name": n, "probability": p} for n, p in self.top_k]}


def to_pil(image: ImageLike) -> Any:
    """A decoded RGB PIL image from any ``ImageLike``; DataError when it is not an image."""
    from PIL import Image

    from pochitrain.data import open_rgb

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise DataError("画像ファイルが見つかりません\n"
                            f"Image file not found: {path}", "Check the path.")
        decoded = open_rgb(path)
        if decoded is None:
            raise DataError("画像としてデコードできません\n"
                            f"{path} cannot be decoded as an image.",
                            "Pass a PNG / JPEG / BMP / WebP ... file.")
        return decoded
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
                image.ndim == 3 and image.shape[2] not in (1, 3)):
            raise DataError(
                "NumPy の画像は uint8 の HxW か HxWx3 (RGB) にしてください\n"
                f"A NumPy image must be uint8 HxW or HxWx3 (RGB); got {image.dtype} "
                f"{tuple(image.shape)}.",
                "Convert it first, e.g. np.asarray(pil_image.convert('RGB')); OpenCV's BGR "
                "arrays need image[..., ::-1].")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    raise UsageError("この種類の入力は分類できません\n"
                     f"Cannot classify a {type(image).__name__}.",
                     "Pass a PIL image, a uint8 NumPy array (HxWx3 RGB) or a file path.")


class Predictor:
    """One opened model; ``predict`` takes one image or a list of them.

    ``model``: a .pth checkpoint, .onnx model or TensorRT .engine. ``config``: a training
    config for files without pochitrain metadata. ``device`` (PyTorch) and ``providers``
    (ONNX Runtime) as in ``pochi infer``. ``batch_size``: images per model call.
    """

    def __init__(self, model: str | Path, *, config: str | Path | None = None,
                 device: str = "auto", providers: list[str] | None = None,
                 batch_size: int = 32) -> None:
        from pochitrain.model import open_model

        if batch_size < 1:
            raise UsageError("batch_size は 1 以上にしてください\n"
                             f"batch_size must be 1 or more, got {batch_size}.")
        self._model = open_model(model, config=config, device=device, providers=providers)
        try:
            self.batch_size = self._model.fixed_batch or batch_size
            self._model.runner.check_batch_size(self.batch_size)
        except BaseException:
            self._model.close()
            raise

    @property
    def class_names(self) -> list[str]:
        return self._model.class_names

    @property
    def runtime(self) -> str:
        return self._model.runtime

    @property
    def meta(self) -> ModelMeta:
        """The model's ``ModelMeta`` (class names, preprocessing, model name, provenance)."""
        return self._model.meta

    def preprocess(self, image: ImageLike) -> np.ndarray:
        """One image -> float32 (3, H, W), exactly as ``pochi infer`` prepares it."""
        return self._model.preprocess(to_pil(image))

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, H, W) preprocessed images -> (N, classes) softmax probabilities,
        run ``batch_size`` at a time (a fixed-batch model gets padded chunks)."""
        return self._model.probabilities(batch, self.batch_size)

    def predict(self, images: ImageLike | Sequence[ImageLike],
                top_k: int = 1) -> Prediction | list[Prediction]:
        """A ``Prediction`` for one image, a list of them for a list (same order)."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if top_k < 1:
            raise UsageError("top_k は 1 以上にしてください\n"
                             f"top_k must be 1 or more, got {top_k}.")
        if not items:
            return []
        probs = self.probabilities(np.stack([self.preprocess(im) for im in items]))
        preds = [self._prediction(row, top_k) for row in probs]
        return preds[0] if single else preds

    def _prediction(self, row: np.ndarray, top_k: int) -> Prediction:
        names = self.class_names
        order = np.argsort(-row, kind="stable")[:min(top_k, len(names))]
        best = int(order[0])
        return Prediction(names[best], best, float(row[best]),
                          [(names[int(i)], float(row[int(i)])) for i in order])

    def close(self) -> None:
        self._model.close()

    def __enter__(self) -> Predictor:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""``Predictor``: classify images from Python with any model file pochitrain makes.

    from pochitrain import Predictor

    with Predictor("work_dirs/20261128_001/models/best_epoch6.onnx") as p:
        top = p.predict("photo.jpg", top_k=3)
        print(top.class_name, top.probability, top.top_k)

The model opens through ``pochitrain.model`` as in ``pochi infer``, so a prediction here
equals the row of ``pochi infer``'s CSV for that image.
"""

from __future__ import annotations

import io
import itertools
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from pochitrain.arguments import argument_error, count_argument, file_argument
from pochitrain.errors import DataError, ShapeError, UsageError

if TYPE_CHECKING:
    import torch

    from pochitrain.meta import ModelMeta

ImageLike = Any  # PIL image, HxWx3 (RGB) / HxW uint8 array, file path, bytes or binary file


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


def to_pil(image: ImageLike, name: str = "image") -> Any:
    """A decoded RGB PIL image from any ``ImageLike``; DataError when it is not an image.
    ``name``: the argument it was passed as, for the messages."""
    from PIL import Image

    from pochitrain.data import open_rgb, upright
    from pochitrain.preprocess import rgb8

    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise _empty(name, f"a {image.width}x{image.height} PIL image")
        try:  # 16-bit images scaled, and the EXIF orientation applied, as for their files
            return rgb8(upright(image))
        except (OSError, ValueError, SyntaxError) as exc:  # truncated, or its file closed
            raise DataError("PIL 画像を読み込めません\n"
                            f"The PIL image passed as {name} cannot be read: "
                            f"{type(exc).__name__}: {str(exc)[:200]}",
                            "Pass an image that is loaded (image.load()) and whose file is "
                            "open, or its path.") from None
    if isinstance(image, (str, Path)):
        path = file_argument(name, image, "'photo.jpg'")
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
        return _array_image(image, name)
    if is_encoded(image):  # the bytes of an image file, or a binary file object
        data = _read_encoded(image, name)
        decoded = open_rgb(cast(Any, Upload(data, f"the image passed as {name}")))
        if decoded is None:
            raise DataError("画像としてデコードできません\n"
                            f"The bytes passed as {name} cannot be decoded as an image.",
                            "Pass the bytes of a PNG / JPEG / BMP / WebP ... file (a path as "
                            "a str or pathlib.Path).")
        return decoded
    raise UsageError("この種類の入力は分類できません\n"
                     f"Cannot classify an object of type {type(image).__name__} (argument "
                     f"{name}).",
                     "Pass a PIL image, a uint8 NumPy array (HxWx3 RGB), a file path or the "
                     "bytes of an image file, or a list of them.")


class Upload(io.BytesIO):
    """Encoded bytes given to a decoder in place of a path (its messages print the name)."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label


def is_encoded(image: object) -> bool:
    """An encoded image file: bytes, or a file object (one image, not an iterator of lines)."""
    return isinstance(image, (bytes, bytearray, memoryview)) or hasattr(image, "read")


def _read_encoded(image: Any, name: str) -> bytes:
    if not hasattr(image, "read"):
        return bytes(image)
    try:
        data = None if isinstance(image, io.TextIOBase) else image.read()
    except (OSError, ValueError) as exc:  # closed, or not readable
        raise DataError("ファイルオブジェクトを読めません\n"
                        f"The file object passed as {name} cannot be read: "
                        f"{type(exc).__name__}: {str(exc)[:200]}",
                        "Pass a binary file object open for reading: open(path, 'rb').") from None
    if not isinstance(data, bytes):
        raise UsageError("テキストモードのファイルは分類できません\n"
                         f"The file object passed as {name} is not binary (text mode?).",
                         "Open it in binary mode: open(path, 'rb').")
    return data


def _array_image(image: np.ndarray, name: str) -> Any:
    from PIL import Image

    if image.size == 0:
        raise _empty(name, f"an array of shape {tuple(image.shape)}")
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
            image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise DataError(
            "NumPy の画像は uint8 の HxW か HxWx3 (RGB) にしてください\n"
            f"A NumPy image ({name}) must be uint8 HxW or HxWx3 (RGB); got {image.dtype} "
            f"{tuple(image.shape)}.",
            "Convert it first, e.g. np.asarray(pil_image.convert('RGB')); OpenCV's BGR "
            "arrays need image[..., ::-1]; several images go in a list: list(batch).")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")


def _empty(name: str, what: str) -> DataError:
    return DataError("空の画像は分類できません\n"
                     f"The image passed as {name} is empty ({what}): it has no pixels.",
                     "Pass an image at least 1 pixel wide and high.")


def _providers(value: Any) -> list[str] | None:
    """None, one provider as a str, or a list of them."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise argument_error("providers", value, "a list of provider names (or one as a str)",
                         "['cuda', 'cpu']")


class Predictor:
    """One opened model; ``predict`` takes one image or a list of them.

    ``model``: a .pth checkpoint, .onnx model or TensorRT .engine. ``config``: a training
    config for files without pochitrain metadata. ``device`` (PyTorch) and ``providers``
    (ONNX Runtime) as in ``pochi infer``. ``batch_size``: images per model call.
    """

    def __init__(self, model: str | Path, *, config: str | Path | None = None,
                 device: str = "auto", providers: list[str] | str | None = None,
                 batch_size: int = 32) -> None:
        from pochitrain.model import open_model

        model = file_argument("model", model, "'models/best_epoch6.onnx'")
        if config is not None:
            config = file_argument("config", config, "'config.py'")
        if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
            raise argument_error("device", device, "'auto', 'cpu', 'cuda' or 'cuda:N'",
                                 "'cpu'")
        batch_size = count_argument("batch_size", batch_size)
        self._closed = False
        self._calls = threading.Condition()  # close() waits for model calls in other threads
        self._running = 0
        self._model = open_model(model, config=config, device=device,
                                 providers=_providers(providers))
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
        self._check_open()
        return self._model.preprocess(to_pil(image))

    def probabilities(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """float32 (N, 3, H, W) preprocessed images -> (N, classes) softmax probabilities,
        run ``batch_size`` at a time (a fixed-batch model gets padded chunks)."""
        self._check_open()
        checked = self._checked_batch(batch)
        with self._model_call():
            return self._model.probabilities(checked, self.batch_size)

    def predict(self, images: ImageLike | Iterable[ImageLike],
                top_k: int = 1) -> Prediction | list[Prediction]:
        """A ``Prediction`` for one image, a list of them for a list, tuple or iterator of
        images (same order), which is decoded and run ``batch_size`` images at a time."""
        self._check_open()
        top_k = count_argument("top_k", top_k)
        single = not isinstance(images, (list, tuple, Iterator)) or is_encoded(images)
        items = iter([images] if single else images)
        preds: list[Prediction] = []
        while chunk := list(itertools.islice(items, self.batch_size)):
            batch = np.stack([self._model.preprocess(to_pil(im, "images")) for im in chunk])
            with self._model_call():  # a close() from another thread ends the list here
                probs = self._model.probabilities(batch, self.batch_size)
            preds.extend(self._prediction(row, top_k) for row in probs)
        return preds[0] if single else preds

    def _checked_batch(self, batch: Any) -> np.ndarray:
        """``batch`` as float32 (N, 3, H, W) NumPy at the model's H x W; ShapeError else."""
        h, w = self.meta.preprocess.input_size
        if hasattr(batch, "detach"):  # a torch tensor
            batch = batch.detach().cpu().numpy()
        if (isinstance(batch, np.ndarray) and np.issubdtype(batch.dtype, np.floating)
                and tuple(batch.shape[1:]) == (3, h, w)):
            return np.ascontiguousarray(batch, dtype=np.float32)
        got = (f"{batch.dtype} {tuple(batch.shape)}" if isinstance(batch, np.ndarray)
               else type(batch).__name__)
        raise ShapeError("probabilities には前処理済みの (N, 3, H, W) float32 配列を渡してください\n"
                         f"probabilities takes preprocessed float32 images of shape "
                         f"(N, 3, {h}, {w}); got {got}.",
                         "Pass np.stack([predictor.preprocess(image) for image in images]), "
                         "or call predict(images).")

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("この Predictor は閉じられています\n"
                             "This Predictor is closed (close() was called or its with-block "
                             "ended): it cannot run the model any more.",
                             "Create a new Predictor(model) to predict again.")

    def _prediction(self, row: np.ndarray, top_k: int) -> Prediction:
        names = self.class_names
        order = np.argsort(-row, kind="stable")[:min(top_k, len(names))]
        best = int(order[0])
        return Prediction(names[best], best, float(row[best]),
                          [(names[int(i)], float(row[int(i)])) for i in order])

    @contextmanager
    def _model_call(self) -> Iterator[None]:
        with self._calls:
            self._check_open()
            self._running += 1
        try:
            yield
        finally:
            with self._calls:
                self._running -= 1
                self._calls.notify_all()

    def close(self) -> None:
        """Release the model; model calls running in other threads finish first, and
        later calls (the rest of a list being predicted too) raise a UsageError."""
        with self._calls:
            if self._closed:
                return
            self._closed = True
            self._calls.wait_for(lambda: self._running == 0)
        self._model.close()

    def __enter__(self) -> Predictor:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

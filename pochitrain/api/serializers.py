"""Request bodies for ``POST /api/v1/predict`` from images held as NumPy arrays.

The original pochitrain's client helpers, with its names and its dict layout::

    from pochitrain.api.serializers import JpegSerializer, RawArraySerializer

    payload = RawArraySerializer().serialize(frame)        # frame: (H, W, 3) uint8 BGR
    payload = JpegSerializer(quality=90).serialize(frame)  # smaller, for networks
    httpx.post("http://127.0.0.1:8000/api/v1/predict", json=payload)

Arrays are in OpenCV's BGR order, as the server reads the ``raw`` format. JPEG encoding uses
Pillow, so OpenCV is not needed. Only NumPy and Pillow are imported (no torch).
"""

from __future__ import annotations

import base64
import io
from typing import Any, Protocol

import numpy as np

from pochitrain.errors import PochiError


class PayloadError(PochiError, ValueError):
    """An image or a request body that cannot be (de)serialised. Also a ``ValueError``, the
    type the original raised, so existing ``except ValueError`` code keeps working."""


class IImageSerializer(Protocol):
    def serialize(self, image: np.ndarray) -> dict[str, Any]:
        """(H, W, 3) uint8 BGR array -> JSON-ready request fields."""
        ...

    def deserialize(self, data: dict[str, Any]) -> np.ndarray:
        """Request fields -> (H, W, 3) uint8 BGR array."""
        ...


def _check_image(image: Any) -> np.ndarray:
    if (not isinstance(image, np.ndarray) or image.dtype != np.uint8
            or image.ndim != 3 or image.shape[2] != 3):
        got = (f"{image.dtype} {tuple(image.shape)}" if isinstance(image, np.ndarray)
               else type(image).__name__)
        raise PayloadError(
            f"画像は (H, W, 3) の uint8 配列 (BGR) である必要があります: {got}\n"
            f"The image must be an (H, W, 3) uint8 array in BGR order; got {got}.",
            "Convert it first, e.g. cv2.imread(path) or np.asarray(pil_image)[..., ::-1].")
    return image


class RawArraySerializer:
    """Raw pixels, base64: exact and fast to decode; for local use (large bodies)."""

    def serialize(self, image: np.ndarray) -> dict[str, Any]:
        image = _check_image(image)
        return {"image_data": base64.b64encode(np.ascontiguousarray(image).tobytes())
                .decode("ascii"),
                "shape": list(image.shape), "dtype": str(image.dtype), "format": "raw"}

    def deserialize(self, data: dict[str, Any]) -> np.ndarray:
        shape = data.get("shape")
        if not shape or len(shape) != 3 or int(shape[2]) != 3:
            raise PayloadError(
                f"raw 形式には shape [H, W, 3] が必要です: {shape}\n"
                f"The raw format needs shape [H, W, 3]; got {shape}.")
        raw = base64.b64decode(data["image_data"])
        dtype = np.dtype(data.get("dtype", "uint8"))
        try:
            return np.frombuffer(raw, dtype=dtype).reshape([int(v) for v in shape])
        except ValueError:
            raise PayloadError(
                f"データ長が shape {shape} と一致しません。\n"
                f"The data ({len(raw)} bytes) does not fit shape {shape} ({dtype}).") from None


class JpegSerializer:
    """JPEG at ``quality`` (1-100), base64: about a twentieth of the raw size."""

    def __init__(self, quality: int = 90) -> None:
        if not 1 <= int(quality) <= 100:
            raise PayloadError(f"JPEG 品質は 1-100 で指定してください: {quality}\n"
                               f"JPEG quality must be 1 to 100; got {quality}.")
        self.quality = int(quality)

    def serialize(self, image: np.ndarray) -> dict[str, Any]:
        from PIL import Image

        rgb = np.ascontiguousarray(_check_image(image)[..., ::-1])
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=self.quality)
        return {"image_data": base64.b64encode(buffer.getvalue()).decode("ascii"),
                "format": "jpeg"}

    def deserialize(self, data: dict[str, Any]) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(base64.b64decode(data["image_data"]))) as img:
                rgb = np.asarray(img.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError):
            raise PayloadError("JPEG デコード失敗: 不正または破損した画像データ\n"
                               "JPEG decoding failed: the data is not a readable image."
                               ) from None
        return np.ascontiguousarray(rgb[..., ::-1])


def create_serializer(fmt: str) -> IImageSerializer:
    """The serializer of a request ``format``: "raw" or "jpeg"."""
    if fmt == "raw":
        return RawArraySerializer()
    if fmt == "jpeg":
        return JpegSerializer()
    raise PayloadError(f"サポートされていない形式です: {fmt}\n"
                       f"Unsupported format {fmt!r}.", "Use 'raw' or 'jpeg'.")

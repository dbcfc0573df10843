"""Request bodies for ``POST /api/v1/predict`` from NumPy images: the original pochitrain's
client helpers, with its names and its dict layout::

    from pochitrain.api.serializers import JpegSerializer, RawArraySerializer

    payload = RawArraySerializer().serialize(frame)        # frame: (H, W, 3) uint8 BGR
    payload = JpegSerializer(quality=90).serialize(frame)  # smaller, for networks
    httpx.post("http://127.0.0.1:8000/api/v1/predict", json=payload)

Arrays are in OpenCV's BGR order, as the server reads the ``raw`` format. Only NumPy and
Pillow are imported (no OpenCV, no torch).
"""

from __future__ import annotations

import base64
import binascii
import io
import numbers
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from pochitrain.errors import PochiError

URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


def _strict_decoder() -> Callable[..., bytes]:
    """SIMD base64 (the serve extra) where installed: the standard library's decoder took
    most of the CPU of a request carrying a photo."""
    try:
        from pybase64 import b64decode
    except ImportError:
        return base64.b64decode
    return b64decode


strict_b64decode = _strict_decoder()  # (text, validate=True) as base64.b64decode

JPEG_MAX_SIDE = 65500


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
    if image.size == 0:
        raise PayloadError(f"画像が空です: {tuple(image.shape)}\n"
                           f"The image is empty (shape {tuple(image.shape)}): it has no pixels.",
                           "Pass an image at least 1 pixel wide and high.")
    return image


class RawArraySerializer:
    """Raw pixels, base64: exact and fast to decode; for local use (large bodies)."""

    def serialize(self, image: np.ndarray) -> dict[str, Any]:
        image = _check_image(image)
        return {"image_data": base64.b64encode(np.ascontiguousarray(image).tobytes())
                .decode("ascii"),
                "shape": list(image.shape), "dtype": str(image.dtype), "format": "raw"}

    def deserialize(self, data: dict[str, Any]) -> np.ndarray:
        shape = _fields(data).get("shape")
        try:
            dims = [int(v) for v in shape] if isinstance(shape, (list, tuple)) else []
        except (TypeError, ValueError):
            dims = []
        if len(dims) != 3 or dims[2] != 3 or min(dims) < 1:
            raise PayloadError(
                f"raw 形式には shape [H, W, 3] が必要です: {shape}\n"
                f"The raw format needs shape [H, W, 3] (whole numbers, at least 1); got "
                f"{shape!r}.")
        raw = _image_bytes(data)
        try:
            dtype = np.dtype(data.get("dtype", "uint8"))
        except TypeError:
            raise PayloadError(f"dtype が正しくありません: {data.get('dtype')!r}\n"
                               f"Unknown dtype {data.get('dtype')!r}.",
                               "Use 'uint8'.") from None
        try:
            return np.frombuffer(raw, dtype=dtype).reshape(dims)
        except ValueError:
            raise PayloadError(
                f"データ長が shape {shape} と一致しません。\n"
                f"The data ({len(raw)} bytes) does not fit shape {shape} ({dtype}).") from None


class JpegSerializer:
    """JPEG at ``quality`` (1-100), base64: about a twentieth of the raw size."""

    def __init__(self, quality: int = 90) -> None:
        if (isinstance(quality, bool) or not isinstance(quality, numbers.Integral)
                or not 1 <= int(quality) <= 100):
            raise PayloadError(f"JPEG 品質は 1-100 の整数で指定してください: {quality!r}\n"
                               f"JPEG quality must be a whole number from 1 to 100; got "
                               f"{quality!r} ({type(quality).__name__}).",
                               "Pass e.g. JpegSerializer(quality=90).")
        self.quality: int = int(quality)

    def serialize(self, image: np.ndarray) -> dict[str, Any]:
        from PIL import Image

        rgb = np.ascontiguousarray(_check_image(image)[..., ::-1])
        buffer = io.BytesIO()
        try:
            if max(rgb.shape[:2]) > JPEG_MAX_SIDE:  # libjpeg would print to stderr and fail
                raise ValueError(f"a side over {JPEG_MAX_SIDE} pixels")
            Image.fromarray(rgb).save(buffer, format="JPEG", quality=self.quality)
        except (OSError, ValueError) as exc:
            raise PayloadError(f"JPEG にエンコードできません: {rgb.shape}\n"
                               f"The image {rgb.shape} cannot be encoded as JPEG: {exc}.",
                               f"JPEG allows at most {JPEG_MAX_SIDE} pixels a side: resize the "
                               "image, or use RawArraySerializer.") from None
        return {"image_data": base64.b64encode(buffer.getvalue()).decode("ascii"),
                "format": "jpeg"}

    def deserialize(self, data: dict[str, Any]) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(_image_bytes(data))) as img:
                rgb = np.asarray(img.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError):
            raise PayloadError("JPEG デコード失敗: 不正または破損した画像データ\n"
                               "JPEG decoding failed: the data is not a readable image."
                               ) from None
        return np.ascontiguousarray(rgb[..., ::-1])


def _fields(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PayloadError("リクエストの内容は dict である必要があります\n"
                           f"The request fields must be a dict; got {type(data).__name__}.",
                           "Pass the dict serialize() returned.")
    return data


def _image_bytes(data: Any) -> bytes:
    """The base64-decoded ``image_data`` field."""
    encoded = _fields(data).get("image_data")
    if not isinstance(encoded, (str, bytes)):
        raise PayloadError("image_data がありません\n"
                           f"The field image_data must be a base64 str; got "
                           f"{type(encoded).__name__}.", "Pass the dict serialize() returned.")
    try:
        return b64decode_lenient(encoded)
    except (binascii.Error, ValueError):
        raise PayloadError("image_data が base64 ではありません\n"
                           "The field image_data is not valid base64.") from None


def b64decode_lenient(text: str | bytes) -> bytes:
    """Base64 as clients write it: a ``data:`` URL prefix, line breaks, the URL-safe alphabet
    and left-out padding are taken; any other character is refused (binascii.Error), where
    ``base64.b64decode`` would drop it silently and decode what is left."""
    try:  # plain standard base64, what clients mostly send: no copies, one C call
        return strict_b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass  # the lenient reading below decides
    if isinstance(text, bytes):
        text = text.decode("ascii")  # a UnicodeDecodeError is a ValueError
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    text = "".join(text.split()).translate(URLSAFE_TO_STANDARD)
    if len(text) % 4 and not text.endswith("="):
        text += "=" * (-len(text) % 4)
    return strict_b64decode(text, validate=True)


def create_serializer(fmt: str) -> IImageSerializer:
    """The serializer of a request ``format``: "raw" or "jpeg"."""
    if fmt == "raw":
        return RawArraySerializer()
    if fmt == "jpeg":
        return JpegSerializer()
    raise PayloadError(f"サポートされていない形式です: {fmt}\n"
                       f"Unsupported format {fmt!r}.", "Use 'raw' or 'jpeg'.")

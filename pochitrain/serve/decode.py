"""Request payloads -> RGB images, or a ``BadInput``: 422 for a bad image description (base64,
shape, dtype), 400 for bytes that are not a readable image, 415 for a media type we do not
take, 413 for too many pixels (one image over PIL's limit, or a request over its budget:
refused from the headers, before any decoding).

Decoding goes through ``pochitrain.data.open_rgb`` (EXIF orientation, 16-bit scaling, pixel
limit) as ``pochi infer`` reads files, so the server's pixels are infer's pixels.
"""

from __future__ import annotations

import binascii
import io
import math
import warnings
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from pochitrain.api.serializers import b64decode_lenient
from pochitrain.gpu_input import read_header
from pochitrain.predictor import Upload

# Content types of encoded images taken as a whole request body or as a multipart part.
IMAGE_TYPES = ("image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/webp")
# Parts sent without a precise type (curl -F defaults, some clients): sniffed by PIL.
GENERIC_TYPES = ("", "application/octet-stream")
ENCODED_FORMATS = ("jpeg", "jpg", "png", "webp", "image")


class BadInput(Exception):
    """A request the server refuses: answered with HTTP ``status``, ``headers`` and JSON
    ``{"detail": ja + en, "error": code}``; ``errors``: pydantic's, when it refused a 422."""

    def __init__(self, status: int, code: str, ja: str, en: str,
                 errors: list[Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{ja}\n{en}")
        self.status, self.code, self.ja, self.en, self.errors = status, code, ja, en, errors
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"detail": str(self), "error": self.code}


@dataclass
class Payload:
    """One image of a request before decoding: encoded bytes, or a raw HWC uint8 RGB array."""

    name: str
    data: bytes | None = None
    array: np.ndarray | None = None


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_part_type(content_type: str | None, name: str) -> None:
    """415 unless a multipart part / body is an image type we decode (or untyped)."""
    kind = media_type(content_type)
    if kind not in IMAGE_TYPES and kind not in GENERIC_TYPES:
        raise BadInput(415, "unsupported_media_type",
                       f"対応していないメディアタイプです: {kind} ({name})",
                       f"Unsupported media type {kind!r} for {name}: send JPEG, PNG or WebP "
                       "images (image/jpeg, image/png, image/webp).")


def b64decode(text: str) -> bytes:
    """``b64decode_lenient`` of ``image_data``; 422 when broken."""
    try:
        return b64decode_lenient(text)
    except (binascii.Error, ValueError):
        raise BadInput(422, "bad_base64", "image_data の base64 が壊れています。",
                       "image_data is not valid base64.") from None


def raw_array(data: bytes, shape: list[int] | None, dtype: str) -> np.ndarray:
    """v1 ``raw``: HWC uint8 **BGR** bytes (OpenCV order) -> HWC uint8 RGB array."""
    from PIL import Image

    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        np_dtype = None
    if np_dtype != np.dtype(np.uint8):
        raise BadInput(422, "bad_dtype", f"dtype {dtype!r} には対応していません (uint8 のみ)。",
                       f"dtype {dtype!r} is not supported: raw images must be uint8.")
    if shape is None or len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
        raise BadInput(422, "bad_shape",
                       f"shape {shape} は不正です。raw 形式には [H, W, 3] が必要です。",
                       f"shape {shape} is invalid: the raw format needs shape [H, W, 3] "
                       "(or [H, W] / [H, W, 1] for grayscale).")
    if any(int(v) < 1 for v in shape):
        raise BadInput(422, "bad_shape", f"shape {shape} に 0 以下の値があります。",
                       f"shape {shape} has a dimension below 1.")
    expected = math.prod(int(v) for v in shape)  # Python ints: no 64-bit overflow
    if len(data) != expected:
        raise BadInput(422, "bad_shape",
                       f"データ長 {len(data)} バイトが shape {shape} ({expected} バイト) と"
                       "一致しません。",
                       f"The data has {len(data)} bytes but shape {shape} needs {expected}.")
    h, w = int(shape[0]), int(shape[1])
    check_image_pixels("raw image", w, h, Image.MAX_IMAGE_PIXELS)
    if len(shape) == 3 and shape[2] == 3:
        return np.ascontiguousarray(np.frombuffer(data, np.uint8).reshape(h, w, 3)[..., ::-1])
    return np.frombuffer(data, np.uint8).reshape(h, w)  # grayscale


def too_many_pixels(name: str, pixels: int | None, limit: int) -> BadInput:
    """413 for one image over PIL's pixel limit (``pixels`` None: too many to be counted)."""
    from pochitrain.data import PIXEL_LIMIT_ENV

    count = f"{pixels} pixels" if pixels is not None else f"more than {2 * limit} pixels"
    return BadInput(413, "too_many_pixels",
                    f"画像が大きすぎます: {name} ({count}、1 枚の上限 {limit} 画素)。",
                    f"{name} has {count}, over the limit of {limit} pixels per image "
                    f"(the server's {PIXEL_LIMIT_ENV}): send a smaller image.")


def check_image_pixels(name: str, width: int, height: int, limit: int | None) -> None:
    if limit is not None and width * height > limit:
        raise too_many_pixels(name, width * height, limit)


def image_pixels(payload: Payload) -> int:
    """The pixels ``payload`` decodes to, from its header alone (PIL opens lazily); 413 when
    over PIL's limit; 0 when the header is unreadable (decoding then answers 400)."""
    from PIL import Image

    if payload.array is not None:
        return int(payload.array.shape[0] * payload.array.shape[1])
    limit = Image.MAX_IMAGE_PIXELS
    header = read_header(payload.data or b"")  # a JPEG's markers: microseconds, no PIL
    if header is not None:
        check_image_pixels(payload.name, header.width, header.height, limit)
        return header.width * header.height
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns between the limit and twice it
            with Image.open(io.BytesIO(payload.data or b"")) as img:
                width, height = img.size
    except Image.DecompressionBombError:  # over twice the limit: PIL refuses to open it
        raise too_many_pixels(payload.name, None, limit or 0) from None
    except Exception:  # noqa: BLE001 - not an image header: decode_image says so
        return 0
    check_image_pixels(payload.name, width, height, limit)
    return width * height


def check_request_pixels(payloads: list[Payload], limit: int) -> None:
    """413 before anything is decoded when one image is over PIL's pixel limit or all of
    them together over ``limit`` (a small body of large flat images takes long to decode)."""
    total = sum(image_pixels(p) for p in payloads)
    if total > limit:
        raise BadInput(413, "too_many_request_pixels",
                       f"リクエストの画像の画素数が多すぎます ({len(payloads)} 枚で {total} 画素、"
                       f"上限 {limit} 画素)。",
                       f"The request's {len(payloads)} image(s) have {total} pixels in all, "
                       f"over the limit of {limit} pixels per request (--max-request-pixels): "
                       "send fewer or smaller images per request.")


def decode_image(payload: Payload) -> Any:
    """A decoded RGB PIL image; 400 when the bytes are not a readable image."""
    from PIL import Image

    from pochitrain.data import open_rgb

    if payload.array is not None:
        return Image.fromarray(payload.array).convert("RGB")
    data = payload.data or b""
    image = open_rgb(cast(Any, Upload(data, payload.name))) if data else None
    if image is None:
        raise BadInput(400, "undecodable_image",
                       f"画像をデコードできません: {payload.name}",
                       f"{payload.name} is not a readable image (corrupt, truncated or not an "
                       "image). Send JPEG, PNG or WebP data.")
    return image

"""Will nvJPEG read this file as PIL would? Decided from the header bytes alone where they
can be parsed: the size (PIL's pixel limit), the EXIF orientation (nvJPEG ignores it) and the
colour model. Parsing the markers costs microseconds; opening every file with PIL to ask the
same took most of the pipeline's time, so PIL is asked only for headers not parsed here.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_ORIENTATION_TAG = 0x0112
MAX_SEGMENTS = 1024  # real files have a few dozen; past this PIL reads the header


@dataclass(frozen=True)
class JpegHeader:
    width: int
    height: int
    orientation: int  # EXIF orientation, 1 (upright) when there is none
    components: int = 3  # 1 grey, 3 YCbCr (or RGB), 4 CMYK / YCCK
    adobe_transform: int | None = None  # APP14 'Adobe' colour transform, when present

    @property
    def plain_colour(self) -> bool:
        """Grey or YCbCr: what nvJPEG's RGB output and PIL's ``convert("RGB")`` agree on.
        CMYK / YCCK (4 components) and RGB-coded JPEGs (Adobe transform 0) go to PIL."""
        return self.components == 1 or (self.components == 3 and self.adobe_transform != 0)


def _orientation(exif: bytes | bytearray | memoryview) -> int:
    """The orientation tag of IFD0 in a TIFF block (the APP1 payload after 'Exif\\0\\0')."""
    if len(exif) < 8 or exif[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if exif[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", exif, 4)
    if ifd + 2 > len(exif):
        return 1
    (count,) = struct.unpack_from(order + "H", exif, ifd)
    for i in range(count):
        at = ifd + 2 + 12 * i
        if at + 12 > len(exif):
            break
        tag, kind = struct.unpack_from(order + "HH", exif, at)
        if tag == _ORIENTATION_TAG and kind == 3:  # SHORT
            (value,) = struct.unpack_from(order + "H", exif, at + 8)
            return int(value)
    return 1


def read_header(data: bytes | bytearray | memoryview) -> JpegHeader | None:
    """Size and orientation of a baseline/progressive JPEG; None when the markers cannot be
    read (the caller then asks PIL)."""
    if data[:2] != b"\xff\xd8":
        return None
    at, orientation, size, components, adobe = 2, 1, None, 3, None
    try:
        for _ in range(MAX_SEGMENTS):  # a bounded walk: a crafted header cannot stall us
            if at + 4 > len(data):
                break
            if data[at] != 0xFF:
                return None
            marker = data[at + 1]
            if marker == 0xFF:  # fill byte
                at += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
                at += 2
                continue
            (length,) = struct.unpack_from(">H", data, at + 2)
            body = data[at + 4:at + 2 + length]
            if marker == 0xE1 and body[:6] == b"Exif\x00\x00":
                orientation = _orientation(body[6:])
            elif marker in _SOF and len(body) >= 5:
                height, width = struct.unpack_from(">HH", body, 1)
                size = (width, height)
                components = body[5] if len(body) > 5 else 3
            elif marker == 0xEE and body[:5] == b"Adobe" and len(body) >= 12:
                adobe = body[11]
            elif marker == 0xDA:  # start of scan: the headers are over
                break
            at += 2 + length
        else:
            return None
    except struct.error:
        return None
    if size is None:
        return None
    return JpegHeader(size[0], size[1], orientation, components, adobe)


def is_complete_jpeg(data: bytes | bytearray | memoryview) -> bool:
    """Starts with SOI and ends with EOI (zero padding allowed): safe to hand to nvJPEG."""
    if data[:3] != b"\xff\xd8\xff":
        return False
    if data[-2:] == b"\xff\xd9":  # the usual case: no padding
        return True
    end = len(bytes(data).rstrip(b"\x00"))  # one C call, however long the padding
    return data[end - 2:end] == b"\xff\xd9"


def header_verdict(data: bytes | bytearray | memoryview, limit: int | None) -> bool | None:
    """Whether nvJPEG gives the pixels PIL would, from the header alone: True, False (an EXIF
    orientation, CMYK / YCCK or RGB-coded colour, more pixels than ``limit``), or None when
    the markers cannot be read here (PIL must be asked)."""
    header = read_header(data)
    if header is None:
        return None
    return (header.orientation == 1 and header.plain_colour
            and (limit is None or header.width * header.height <= limit))


def nvjpeg_reads_like_pil(data: bytes | bytearray | memoryview) -> bool:
    """:func:`header_verdict` at PIL's pixel limit; PIL opens the headers not parsed here."""
    from PIL import Image

    verdict = header_verdict(data, Image.MAX_IMAGE_PIXELS)
    if verdict is not None:
        return verdict
    try:  # markers we cannot read: ask PIL
        with Image.open(io.BytesIO(data)) as img:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and img.width * img.height > limit:
                return False
            return img.getexif().get(_ORIENTATION_TAG, 1) == 1
    except Exception:  # noqa: BLE001 - anything odd: PIL (open_rgb) decides
        return False


def for_nvjpeg(data: bytes | bytearray | memoryview) -> bool:
    """A complete JPEG that nvJPEG reads like PIL: hand it over still encoded."""
    return is_complete_jpeg(data) and nvjpeg_reads_like_pil(data)

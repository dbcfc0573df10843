"""The JPEG header reader agrees with PIL on size and EXIF orientation."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from pochitrain.gpu_input import nvjpeg_reads_like_pil, read_header


def _jpeg(size: tuple[int, int], orientation: int | None = None,
          progressive: bool = False) -> bytes:
    image = Image.new("RGB", size, (120, 60, 30))
    buf = io.BytesIO()
    kwargs: dict = {"format": "JPEG", "progressive": progressive}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        exif[0x010F] = "pochitrain test camera"  # another tag before/after orientation
        kwargs["exif"] = exif.tobytes()
    image.save(buf, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [None, 1, 3, 6, 8])
@pytest.mark.parametrize("progressive", [False, True])
def test_size_and_orientation_match_pil(orientation: int | None, progressive: bool) -> None:
    data = _jpeg((37, 23), orientation, progressive)
    header = read_header(data)
    with Image.open(io.BytesIO(data)) as img:
        want = img.getexif().get(0x0112, 1)
        assert header is not None and (header.width, header.height) == img.size
    assert header.orientation == want
    assert nvjpeg_reads_like_pil(data) == (want == 1)


def test_big_endian_exif_and_oddities() -> None:
    # a hand-made Motorola (big-endian) TIFF block with one IFD0 entry: orientation 6
    tiff = b"MM\x00*" + (8).to_bytes(4, "big") + (1).to_bytes(2, "big") + \
        (0x0112).to_bytes(2, "big") + (3).to_bytes(2, "big") + (1).to_bytes(4, "big") + \
        (6).to_bytes(2, "big") + b"\x00\x00" + (0).to_bytes(4, "big")
    base = _jpeg((10, 12))
    app1 = b"Exif\x00\x00" + tiff
    data = base[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + base[2:]
    header = read_header(data)
    assert header is not None and header.orientation == 6 and (header.width, header.height) == (10, 12)
    with Image.open(io.BytesIO(data)) as img:
        assert img.getexif().get(0x0112) == 6
    assert read_header(b"\x89PNG\r\n\x1a\n") is None
    assert read_header(base[:20]) is None  # cut before the frame header


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_colour_model_decides_who_decodes(mode: str) -> None:
    """Grey and YCbCr JPEGs go to nvJPEG; CMYK ones (PIL writes them with an Adobe marker)
    are left to PIL, whose CMYK -> RGB conversion the CPU pipeline uses."""
    buf = io.BytesIO()
    Image.new(mode, (40, 30)).save(buf, format="JPEG")
    header = read_header(buf.getvalue())
    assert header is not None
    assert header.components == {"L": 1, "RGB": 3, "CMYK": 4}[mode]
    assert header.plain_colour == (mode != "CMYK")
    assert nvjpeg_reads_like_pil(buf.getvalue()) == (mode != "CMYK")
    assert header.adobe_transform is None or mode == "CMYK"


def test_crafted_headers_are_left_to_pil_and_padding_is_read_whole() -> None:
    """More segments than a real file has: no verdict from the markers (PIL is asked, which
    reads the same size here). A complete file with zero padding is still complete; a cut
    one or a long run of zeros after SOI is not."""
    from pochitrain.gpu_input import is_complete_jpeg
    from pochitrain.gpu_input.vet import MAX_SEGMENTS

    base = _jpeg((16, 9))
    comments = b"\xff\xfe\x00\x02" * (MAX_SEGMENTS + 1)  # empty COM segments
    crafted = base[:2] + comments + base[2:]
    assert read_header(crafted) is None
    with Image.open(io.BytesIO(crafted)) as img:
        assert img.size == (16, 9)
    assert nvjpeg_reads_like_pil(crafted)  # PIL's answer: upright, within the limit
    assert read_header(base[:2] + comments[:40] + base[2:]) is not None  # a few: read here
    assert is_complete_jpeg(base) and is_complete_jpeg(base + b"\x00" * 1000)
    assert not is_complete_jpeg(base[:-1])
    assert not is_complete_jpeg(b"\xff\xd8\xff" + b"\x00" * 100_000)

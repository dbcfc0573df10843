"""What a request may contain, over real HTTP: one server for the module, uvicorn in a thread
of the test process over the digits .onnx (so a test can change PIL's pixel limit for it).

The server: 2 decode threads (one request decodes on at most one of them), 8 files per
multipart request, 80 megapixels per request. Ordering is read from events (the order in
which the server finished preparing images) and its queue depth, never from durations.
"""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from serving import TLS, http_get, http_post

PREDICT = "/api/v1/predict"
REQUEST_PIXELS = 80_000_000


class Served(NamedTuple):
    url: str
    model: Any  # pochitrain.serve.model.ServeModel


@pytest.fixture(scope="module")
def served(untrained_checkpoint: Path, onnx_export: Callable[..., Path]) -> Iterator[Served]:
    import socket

    from pochitrain.serve.app import ServeSettings, create_app
    from pochitrain.serve.model import ServeModel

    model = ServeModel(onnx_export(untrained_checkpoint), max_batch=8, pipeline="cpu")
    settings = ServeSettings(max_batch=8, decode_workers=2, max_images=8,
                             max_request_pixels=REQUEST_PIXELS, access_log=False)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(model, settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    end = time.monotonic() + 60  # hang guard
    while not server.started and thread.is_alive() and time.monotonic() < end:
        time.sleep(0.02)
    assert server.started, "the server did not start"
    try:
        yield Served(url, model)
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
        model.close()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` RGB pixels (its data is not a full image):
    refused from the header alone, it never needs to be decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


def _png(size: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 90)).save(buf, format="PNG")
    return buf.getvalue()


def _refusal(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    text = body["detail"] if isinstance(body["detail"], str) else body["message"]
    ja, en = text.split("\n", 1)
    assert any(ord(c) > 0x3000 for c in ja) and en.isascii(), text
    return en


def test_refused_from_headers_before_decoding(served: Served,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    url = served.url + PREDICT
    limit = Image.MAX_IMAGE_PIXELS
    assert limit is not None and 7000 * 7000 < limit < 10000 * 9000 < 2 * limit
    # the request's images together over --max-request-pixels, each under PIL's limit
    files = [("files", (f"{i}.png", _png_header(7000, 7000), "image/png")) for i in range(2)]
    en = _refusal(http_post(url, files=files, timeout=60), 413, "too_many_request_pixels")
    assert f"98000000 pixels in all, over the limit of {REQUEST_PIXELS}" in en
    assert "--max-request-pixels" in en
    # one image over PIL's limit: the limit is named (counted, or too large to be counted)
    for width, height, count in ((10000, 9000, "90000000 pixels"),
                                 (20000, 20000, f"more than {2 * limit} pixels")):
        en = _refusal(http_post(url, content=_png_header(width, height), timeout=60,
                                 headers={"content-type": "image/png"}), 413, "too_many_pixels")
        assert f"{count}, over the limit of {limit} pixels per image" in en
        assert "POCHI_MAX_IMAGE_PIXELS" in en
    # more files than --max-images: the documented 413, not a parse error
    small = _png(8)
    files = [("files", (f"{i}.png", small, "image/png")) for i in range(9)]
    en = _refusal(http_post(url, files=files, timeout=60), 413, "too_many_images")
    assert "More than 8 files" in en and "--max-images" in en
    # POCHI_MAX_IMAGE_PIXELS=none: a raw shape whose product overflows 64 bits is a 422
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    for shape in ([2**32, 2**32, 3], [2**64, 1, 3], [2**40, 2**40]):
        _refusal(http_post(url, json={"image_data": "", "format": "raw", "shape": shape},
                            timeout=60), 422, "bad_shape")
    monkeypatch.undo()
    good = http_post(url, content=small, headers={"content-type": "image/png"}, timeout=60)
    assert good.status_code == 200, good.text


def test_fast_predict_answers_as_the_fastapi_route(served: Served,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """POST /predict without a query string is answered ahead of FastAPI's routing; with one
    (``?top_k=1``, the default anyway) by the FastAPI route. Same answers, same refusals."""
    import base64

    from pochitrain.serve import app as serve_app

    made: list[object] = []

    class Counted(serve_app.Request):  # type: ignore[name-defined, misc]
        def __init__(self, *args: Any) -> None:
            made.append(self)
            super().__init__(*args)

    monkeypatch.setattr(serve_app, "Request", Counted)
    url = served.url + PREDICT
    jpeg = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (40, 30), (10, 200, 90)).save(jpeg, format="JPEG")
    bodies = [{"image_data": base64.b64encode(jpeg.getvalue()).decode(), "format": "jpeg"},
              {"image_data": "not base64!", "format": "jpeg"},
              {"image_data": "", "format": "raw", "shape": [2, 2]},
              {"format": "jpeg"}]
    statuses = []
    for body in bodies:
        answers = []
        for query, fast in (("", 1), ("?top_k=1", 0)):
            made.clear()
            answers.append(http_post(url + query, json=body, timeout=60))
            assert len(made) == fast, query
        fast_answer, routed = answers
        assert fast_answer.status_code == routed.status_code
        assert fast_answer.headers["content-type"] == routed.headers["content-type"]
        one, two = fast_answer.json(), routed.json()
        one.pop("e2e_time_ms", None), two.pop("e2e_time_ms", None)
        assert one == two
        statuses.append((fast_answer.status_code, one.get("error")))
    assert statuses == [(200, None), (422, "bad_base64"), (422, "bad_shape"),
                        (422, "invalid_request")]
    made.clear()
    odd = http_post(url, content=b"x", headers={"content-type": "text/plain"}, timeout=60)
    assert len(made) == 1 and odd.status_code == 415
    assert http_get(url, timeout=60).status_code == 405 and len(made) == 1  # routed


def _metric(text: str, name: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(name + " "))
    return float(line.rsplit(" ", 1)[1])


def test_small_request_answered_while_a_large_one_decodes(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    url = served.url + PREDICT
    big = _png(2500)  # a small file of 6 megapixels, slow to decode
    files = [("files", (f"big{i}.png", big, "image/png")) for i in range(6)]
    prepared: list[str] = []  # image names, in the order the decode threads finished them
    prepare = served.model.prepare

    def recorded(payload: Any) -> Any:
        result = prepare(payload)
        prepared.append(payload.name)
        return result

    monkeypatch.setattr(served.model, "prepare", recorded)

    async def main() -> tuple[int, float, httpx.Response]:
        async with httpx.AsyncClient(timeout=120, verify=TLS) as client:
            async def depth() -> float:
                return _metric((await client.get(served.url + "/metrics")).text,
                               "pochi_queue_depth")

            large = asyncio.ensure_future(client.post(url, files=files))
            for _ in range(6000):  # until the large request is admitted and decoding
                if await depth() >= 6:
                    break
                await asyncio.sleep(0.01)
            small = await client.post(url, content=_png(32),
                                      headers={"content-type": "image/png"})
            return small.status_code, await depth(), await large

    status, depth_after_small, large = asyncio.run(main())
    assert status == 200 and large.status_code == 200 and large.json()["count"] == 6
    # the small image did not queue behind the large request's 6 (one decode thread each)
    assert prepared.index("body") <= 2, prepared
    assert depth_after_small >= 6, "the large request was answered first"


def test_docs_page_works_offline(served: Served) -> None:
    page = http_get(served.url + "/docs", timeout=60)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<script" not in html and "http://" not in html and "https://" not in html
    for text in (f"POST {PREDICT}", "GET /api/v1/health", "top_k", "too_many_request_pixels",
                 "queue_full", "multipart/form-data"):
        assert text in html, text
    spec = http_get(served.url + "/openapi.json", timeout=60).json()
    assert PREDICT in spec["paths"]
    assert http_get(served.url + "/redoc", timeout=60).status_code == 404


def test_engine_without_a_gpu_names_what_to_serve(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from pochitrain.cli.main import run

    if torch.cuda.is_available():
        pytest.skip("this machine can run TensorRT engines")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not an engine")
    assert run(["serve", str(engine)]) == 1
    err = capsys.readouterr().err
    assert "NVIDIA GPU with TensorRT" in err and "pochi serve m.onnx" in err
    assert "infer-onnx" not in err and "Traceback" not in err


"""Hostile inputs to ``pochi serve`` over real HTTP and to the Python API (``Predictor``).

The requests go to the session's .onnx server (conftest ``servers``, shared with
test_serve); every request below is answered with JSON (no 500 for a client's mistake, no
traceback in its log), and a good request still works after.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serving import TLS, Server

PREDICT = "/api/v1/predict"
HANG_GUARD_S = 60


class Served:
    """A running server with a client at hand."""

    def __init__(self, server: Server) -> None:
        self.url = server.url
        self.log = server.log
        self.client = httpx.Client(base_url=self.url, timeout=HANG_GUARD_S, verify=TLS)

    def post(self, body: bytes | str, content_type: str = "application/json",
             **kw: Any) -> Any:
        return self.client.post(PREDICT, content=body, headers={"content-type": content_type},
                                **kw)


@pytest.fixture(scope="module")
def model(untrained_checkpoint: Path, onnx_export: Callable[..., Path]) -> Path:
    return onnx_export(untrained_checkpoint)


@pytest.fixture(scope="module")
def server(servers: dict[str, Server]) -> Iterator[Served]:
    served = Served(servers["onnx"])  # serves ``model``
    yield served
    served.client.close()


@pytest.fixture(scope="module")
def png(digits_dir: Path) -> bytes:
    return next((digits_dir / "val" / "3").glob("*.png")).read_bytes()


def refused(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code
    text = body.get("message", body["detail"])
    assert isinstance(text, str) and len(text.splitlines()) >= 2  # Japanese, then English
    return body


def test_json_the_encoder_could_not_echo_is_a_422(server: Served, png: bytes) -> None:
    """Bodies whose refusal echoed an input JSON cannot hold (NaN, Infinity, a number over
    float range, bytes that are not UTF-8, UTF-16) were 500s in plain text with a traceback;
    a long body is not echoed whole."""
    b64 = base64.b64encode(png).decode()

    def request(image_data: str, rest: str) -> str:
        return '{"image_data": "' + image_data + '"' + rest + "}"

    for body in ("1e999", request(b64, ', "format": "jpeg", "top_k": NaN'),
                 request(b64, ', "top_k": Infinity'),
                 b'{"image_data": "\xff\xfe", "format": "jpeg"}',
                 request("x", "").encode("utf-16"), "[" + "1," * 100_000 + "1"):
        answer = refused(server.post(body), 422, "invalid_request")
        assert len(str(answer["detail"])) < 2000
    good = server.post(request(b64, ', "format": "jpeg"'))
    assert good.status_code == 200
    # a UTF-8 byte order mark, URL-safe base64 and left-out padding are taken
    padded = png + b"\0" * (1 if (len(png) + 1) % 3 else 2)  # trailing bytes PNG ignores
    std = base64.b64encode(padded).decode()
    assert std.endswith("=")
    for image_data in (std, std.rstrip("="), base64.urlsafe_b64encode(padded).decode()):
        r = server.post(b"\xef\xbb\xbf" + request(image_data, ', "format": "png"').encode())
        assert r.status_code == 200, r.text
        assert r.json()["probabilities"] == good.json()["probabilities"]


def test_unknown_paths_methods_and_encodings_are_bilingual_json(server: Served,
                                                                png: bytes) -> None:
    """404 / 405 were FastAPI's English-only {"detail": "Not Found"}; a gzip body was read
    as JSON and refused as malformed."""
    gzipped = server.client.post(PREDICT, content=gzip.compress(png), headers={
        "content-type": "image/png", "content-encoding": "gzip"})
    assert "Content-Encoding" in refused(gzipped, 415, "unsupported_media_type")["detail"]
    refused(server.client.get("/nope"), 404, "not_found")
    body = refused(server.client.get(PREDICT), 405, "method_not_allowed")
    assert "POST" in body["detail"]
    refused(server.client.delete("/api/v1/health"), 405, "method_not_allowed")
    assert server.client.head(PREDICT).status_code == 405


def test_a_failing_app_is_a_json_500_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """A bug in a route (anything not a refusal) is answered JSON 500 internal_error."""
    from pochitrain.serve.app import ServeSettings
    from pochitrain.serve.metrics import Metrics
    from pochitrain.serve.middleware import LimitAndLog

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("a bug")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    settings = ServeSettings(access_log=False)
    app = LimitAndLog(broken, settings, Metrics(lambda: 0.0), {PREDICT})
    asyncio.run(app({"type": "http", "method": "POST", "path": PREDICT, "headers": []},
                    receive, send))
    assert sent[0]["status"] == 500
    assert b'"internal_error"' in sent[1]["body"]
    assert "RuntimeError: a bug" in caplog.text


def test_the_server_log_has_no_traceback(server: Served) -> None:
    """Runs after the tests above sent their bodies."""
    assert server.client.get("/api/v1/health").status_code == 200
    assert "Traceback" not in server.log.read_text()


def test_predictor_takes_what_pochi_infer_reads(model: Path, digits_dir: Path,
                                                tmp_path: Path) -> None:
    """An EXIF-rotated JPEG opened with PIL is classified as the file by path (it was not
    turned upright); the bytes of a file and binary file objects are one image each (a
    BytesIO was taken for an iterator of lines: "Cannot classify a bytes")."""
    from PIL import Image

    from pochitrain import PochiError, Predictor

    source = Image.open(next((digits_dir / "val" / "3").glob("*.png"))).convert("RGB")
    exif = source.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    source.resize((40, 24)).save(path, exif=exif)
    with Predictor(model) as predictor:
        by_path = predictor.predict(path).probability
        assert predictor.predict(Image.open(path)).probability == by_path
        stored = predictor.predict(Image.open(path).rotate(0)).probability  # edited: as is
        assert stored != by_path
        data = path.read_bytes()
        with path.open("rb") as f:
            preds = predictor.predict([data, io.BytesIO(data), f])
        assert [p.probability for p in preds] == [by_path] * 3
        assert predictor.predict(io.BytesIO(data)).probability == by_path
        with path.open("r") as text:
            for bad in (b"not an image", text):
                with pytest.raises(PochiError):
                    predictor.predict(bad)


def test_serializers_refuse_what_they_cannot_carry() -> None:
    """Base64 with a stray character was decoded without it ("!!!" -> 0 bytes, then a
    shape message); an empty shape gave an empty array; a side over JPEG's limit was a raw
    OSError."""
    import numpy as np

    from pochitrain.api.serializers import JpegSerializer, PayloadError, RawArraySerializer

    raw = RawArraySerializer()
    with pytest.raises(PayloadError, match="base64"):
        raw.deserialize({"image_data": "AAA!A", "shape": [1, 1, 3]})
    with pytest.raises(PayloadError, match="at least 1"):
        raw.deserialize({"image_data": "", "shape": [0, 5, 3]})
    with pytest.raises(PayloadError, match="65500"):
        JpegSerializer().serialize(np.zeros((65501, 1, 3), np.uint8))
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    encoded = raw.serialize(image)["image_data"]
    for text in (encoded, encoded.rstrip("=").replace("+", "-").replace("/", "_")):
        assert (raw.deserialize({"image_data": text, "shape": [2, 2, 3]}) == image).all()


def test_original_api_refuses_batches_it_cannot_use(untrained_checkpoint: Path,
                                                    tmp_path: Path) -> None:
    """One-channel images and PIL items gave raw torch / TypeErrors from PochiPredictor;
    a label past num_classes a raw IndexError from inside the loss."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from pochitrain import PochiPredictor, PochiTrainer
    from pochitrain.errors import DataError, ShapeError

    gray = DataLoader(TensorDataset(torch.zeros(2, 1, 32, 32), torch.zeros(2)), batch_size=2)
    pil = DataLoader([(object(), 0)], batch_size=1, collate_fn=lambda items: items[0])
    with PochiPredictor("resnet18", 10, "cpu", untrained_checkpoint) as predictor:
        for loader in (gray, pil):
            with pytest.raises(ShapeError, match=r"\(N, 3, H, W\)"):
                predictor.predict(loader)
    from pochitrain import create_data_loaders
    from pochitrain.errors import UsageError

    with pytest.raises(UsageError, match="pretrained must be True or False"):
        PochiTrainer("resnet18", 10, "cpu", pretrained="no")  # was true: a download
    with pytest.raises(UsageError, match="pin_memory"):
        create_data_loaders(tmp_path, tmp_path, pin_memory="no")
    trainer = PochiTrainer("resnet18", 10, "cpu", pretrained=False, work_dir=tmp_path,
                           create_workspace=False)
    trainer.setup_training(learning_rate=0.001, optimizer_name="Adam")
    labels = torch.tensor([1, 50])
    loader = DataLoader(TensorDataset(torch.zeros(2, 3, 32, 32), labels), batch_size=2)
    with pytest.raises(DataError, match="label 50"):
        trainer.train(loader, loader, epochs=1)


def test_serve_refuses_waits_and_sizes_it_cannot_keep(model: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """--max-wait-ms nan / inf started a server whose batches never closed; a body limit
    under one byte refused every body."""
    from pochitrain.cli.main import run

    for args in (["--max-wait-ms", "nan"], ["--max-wait-ms", "inf"],
                 ["--max-body-mb", "1e-7"], ["--max-inflight-mb", "nan"]):
        with pytest.raises(SystemExit) as exited:
            run(["serve", str(model), *args])
        assert exited.value.code == 2, args
        assert "error: argument" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_requests_after_the_drain_get_503_shutting_down(model: Path, png: bytes) -> None:
    """A request that reaches the app once its lifespan ended (uvicorn starts requests whose
    head it parses after cutting the drain) got a 500 "cannot schedule new futures after
    shutdown", or waited forever on the stopped batcher."""
    from fastapi.testclient import TestClient

    from pochitrain.serve.app import ServeSettings, create_app
    from pochitrain.serve.batcher import Batcher, Stopping
    from pochitrain.serve.model import ServeModel

    served = ServeModel(model, device="cpu", max_batch=4, pipeline="cpu")
    try:
        app = create_app(served, ServeSettings(max_batch=4, decode_workers=1,
                                               access_log=False))
        image = {"content": png, "headers": {"content-type": "image/png"}}
        with TestClient(app) as client:  # the lifespan runs, then ends
            assert client.post(PREDICT, **image).status_code == 200
        late = TestClient(app)
        files = [("files", (f"{i}.png", png, "image/png")) for i in range(2)]
        for answer in (late.post(PREDICT, **image), late.post(PREDICT, files=files)):
            refused(answer, 503, "shutting_down")
    finally:
        served.close()
    batcher = Batcher(lambda items: items, max_batch=1, max_wait_s=0, queue_limit=1,
                      on_batch=lambda size, seconds: None)
    batcher.start()
    batcher.stop()
    with pytest.raises(Stopping):
        asyncio.run(asyncio.wait_for(batcher.submit([1]), HANG_GUARD_S))


def test_a_predictor_closed_during_a_list_stops_it(model: Path,
                                                   untrained_checkpoint: Path) -> None:
    """close() while a list is being predicted (another thread, here the list's own
    generator): ONNX failed with a misleading shape message, .pth ran the rest."""
    import numpy as np

    from pochitrain import Predictor
    from pochitrain.errors import UsageError

    for path in (model, untrained_checkpoint):
        predictor = Predictor(path, device="cpu", batch_size=2)

        def images(owner: Predictor = predictor) -> Iterator[Any]:
            for i in range(6):
                if i == 4:
                    owner.close()
                yield np.zeros((8, 8, 3), np.uint8)

        with pytest.raises(UsageError, match="closed"):
            predictor.predict(images())

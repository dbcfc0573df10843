"""pochi serve over real HTTP: real uvicorn servers in subprocesses, real models on the CPU.

Four servers start once, in parallel, as the session begins (conftest ``started_servers``):
the .pth, the .onnx (batching window 20 ms), a "slow" .onnx server (queue of 2 images,
batches of 1) for the 503 test and, last, the SIGTERM drain test, and a ``--workers 2`` .onnx
server.

No test waits for a duration. The .onnx servers take a gate file (a hidden test hook of the
batcher): while it exists their model thread runs no batch, so requests stay in flight
until the test deletes it; the tests wait for conditions the server reports (its queue
depth on /metrics, its listening socket closing).
"""

from __future__ import annotations

import asyncio
import base64
import io
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serving import TLS, Server, free_port, http_get, http_post, metric

PREDICT = "/api/v1/predict"


@pytest.fixture(scope="module")
def onnx_model(untrained_checkpoint: Path, onnx_export: Callable[..., Path]) -> Path:
    return onnx_export(untrained_checkpoint)


@pytest.fixture(scope="module")
def images(digits_dir: Path) -> list[Path]:
    return [sorted(d.iterdir())[i] for d in sorted((digits_dir / "val").iterdir())
            for i in range(2)]


def _reference(model: Path, paths: list[Path]) -> list[object]:
    from pochitrain.predictor import Predictor

    with Predictor(model, device="cpu", batch_size=1) as p:  # pochi infer's default batch
        return list(p.predict(list(paths), top_k=3))  # type: ignore[arg-type]


def _check(got: dict, want: object) -> None:
    assert got["class_id"] == want.index and got["class_name"] == want.class_name  # type: ignore[attr-defined]
    assert abs(got["confidence"] - want.probability) < 1e-5  # type: ignore[attr-defined]
    for entry, (name, prob) in zip(got["top_k"], want.top_k):  # type: ignore[attr-defined]
        assert entry["class_name"] == name and abs(entry["probability"] - prob) < 1e-5
    assert abs(sum(got["probabilities"]) - 1.0) < 1e-6


@pytest.mark.parametrize("kind", ["pth", "onnx"])
def test_predictions_equal_pochi_infer(kind: str, servers: dict[str, Server],
                                       untrained_checkpoint: Path, onnx_model: Path,
                                       images: list[Path]) -> None:
    model = untrained_checkpoint if kind == "pth" else onnx_model
    want = _reference(model, images)
    url = servers[kind].url + PREDICT
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images]
    got = http_post(url, files=files, data={"top_k": "3"}, timeout=30).json()
    assert got["count"] == len(images) and got["backend"] == ("pytorch" if kind == "pth"
                                                               else "onnx")
    for pred, path, ref in zip(got["predictions"], images, want):
        assert pred["filename"] == path.name
        _check(pred, ref)
    # one image per request: the image body, then API v1 JSON with format "jpeg"
    body = http_post(url + "?top_k=3", content=images[0].read_bytes(),
                      headers={"content-type": "image/png"}, timeout=30).json()
    _check(body, want[0])
    encoded = base64.b64encode(images[1].read_bytes()).decode()
    v1 = http_post(url, json={"image_data": encoded, "format": "jpeg", "top_k": 3},
                    timeout=30).json()
    _check(v1, want[1])
    assert {"e2e_time_ms", "backend", "probabilities"} <= set(v1)


def test_v1_raw_bgr(servers: dict[str, Server], onnx_model: Path, images: list[Path]) -> None:
    from PIL import Image

    rgb = np.asarray(Image.open(images[3]).convert("RGB"))
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    got = http_post(servers["onnx"].url + PREDICT, timeout=30, json={
        "image_data": base64.b64encode(bgr.tobytes()).decode(), "format": "raw",
        "shape": list(bgr.shape), "dtype": "uint8", "top_k": 3}).json()
    _check(got, _reference(onnx_model, [images[3]])[0])
    # the original's version keys also when ONNX Runtime serves the model
    version = http_get(servers["onnx"].url + "/api/v1/version", timeout=30).json()
    assert {"pytorch", "python"} <= set(version["backend_versions"])


def test_200_concurrent_requests(servers: dict[str, Server], images: list[Path]) -> None:
    server = servers["onnx"]
    url = server.url + PREDICT
    bodies = [p.read_bytes() for p in images]
    before = metric(http_get(server.url + "/metrics").text, "pochi_batch_size_count")

    async def main() -> list[int]:
        # a new connection per request: a reused keep-alive one can be closed by the server's
        # idle timeout just as the next request goes out on a heavily loaded machine
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=60, verify=TLS) as client:
            async def one(i: int) -> int:
                r = await client.post(url, content=bodies[i % len(bodies)],
                                      headers={"content-type": "image/png"})
                return r.status_code
            sent = asyncio.gather(*(one(i) for i in range(200)))
            # the first batch waits for the 50 requests in flight (a full --max-batch of 32)
            await server.wait_metric("pochi_batch_size_count", lambda n: n > before)
            server.release()
            return await sent

    server.hold(until_waiting=50)
    try:
        codes = asyncio.run(main())
    finally:
        server.release()
    assert codes == [200] * 200
    metrics = http_get(servers["onnx"].url + "/metrics").text
    count = metric(metrics, "pochi_batch_size_count")
    assert count < 200, "no request was batched with another"
    assert metric(metrics, "pochi_batch_size_sum") >= 200


def _jpeg(path: Path) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="JPEG")
    return buf.getvalue()


def _bad_requests(png: bytes) -> list[tuple[str, dict, int]]:
    """(what, httpx.post kwargs, expected status); the pth server's body limit is 1 MB."""
    b64 = base64.b64encode(bytes(12)).decode()

    def chunks() -> Iterator[bytes]:
        for _ in range(40):  # 2.6 MB, streamed without Content-Length
            yield bytes(65536)

    return [
        ("body over the limit", {"content": bytes(1_200_000),
                                 "headers": {"content-type": "image/jpeg"}}, 413),
        ("chunked body over the limit", {"content": chunks(),
                                         "headers": {"content-type": "image/jpeg"}}, 413),
        ("broken base64", {"json": {"image_data": "@@not base64@@", "format": "jpeg"}}, 422),
        ("raw without shape", {"json": {"image_data": b64, "format": "raw"}}, 422),
        ("raw wrong shape", {"json": {"image_data": b64, "shape": [3, 3, 3]}}, 422),
        ("raw shape not HWC", {"json": {"image_data": b64, "shape": [2, 2, 3, 1]}}, 422),
        ("raw wrong dtype", {"json": {"image_data": b64, "shape": [1, 1, 3],
                                      "dtype": "float32"}}, 422),
        ("raw unknown dtype", {"json": {"image_data": b64, "shape": [2, 2, 3],
                                        "dtype": "pixels"}}, 422),
        ("missing image_data", {"json": {"format": "jpeg"}}, 422),
        ("malformed JSON", {"content": b"{not json", "headers": {"content-type":
                                                                 "application/json"}}, 422),
        ("top_k 0", {"params": {"top_k": "0"}, "content": png,
                     "headers": {"content-type": "image/png"}}, 422),
        ("corrupt image body", {"content": b"\xff\xd8\xff\xe0garbage" * 50,
                                "headers": {"content-type": "image/jpeg"}}, 400),
        ("truncated PNG upload", {"files": [("files", ("cut.png", png[:len(png) // 2],
                                                       "image/png"))]}, 400),
        ("not an image (base64 jpeg)", {"json": {"image_data": b64, "format": "jpeg"}}, 400),
        ("text file upload", {"files": [("files", ("a.txt", b"hello", "text/plain"))]}, 415),
        ("text body", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415),
        ("no content type", {"content": png}, 415),
        ("empty file upload", {"data": {"top_k": "2"},
                                   "files": [("other", ("x.png", b"", "image/png"))]}, 400),
    ]


def test_bad_payloads_then_good_requests(servers: dict[str, Server],
                                         untrained_checkpoint: Path, images: list[Path]) -> None:
    url = servers["pth"].url + PREDICT
    png = images[5].read_bytes()
    want = _reference(untrained_checkpoint, [images[5]])[0]
    for what, kwargs, status in _bad_requests(png):
        with httpx.Client(timeout=30, verify=TLS) as client:
            try:
                r = client.post(url, **kwargs)
            except httpx.HTTPError as exc:  # the server may close before reading it all
                pytest.fail(f"{what}: no answer ({exc!r})")
        assert r.status_code == status, (what, r.status_code, r.text)
        body = r.json()
        detail = body["detail"]
        if status == 422:  # the original's (FastAPI's) body: a list of errors; ours beside
            assert detail and all({"type", "loc", "msg"} <= set(e) for e in detail), (what, body)
            detail = body["message"]
        ja, en = detail.split("\n", 1)
        assert any(ord(c) > 0x3000 for c in ja) and en.isascii(), (what, detail)
        good = http_post(url + "?top_k=3", content=png, headers={"content-type": "image/png"},
                          timeout=30)
        assert good.status_code == 200, (what, good.text)
        _check(good.json(), want)


def test_queue_full_answers_503_with_retry_after(servers: dict[str, Server],
                                                 images: list[Path]) -> None:
    server = servers["slow"]  # queue 2 images, batches of 1
    url = server.url + PREDICT
    body = images[0].read_bytes()

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, verify=TLS) as client:
            def post() -> asyncio.Future[httpx.Response]:
                return asyncio.ensure_future(client.post(
                    url, content=body, headers={"content-type": "image/png"}))

            queued = [post() for _ in range(2)]  # held by the gate: the queue is full
            await server.wait_metric("pochi_queue_depth", lambda n: n == 2)
            refused = await asyncio.gather(*(post() for _ in range(4)))
            server.release()
            return [*await asyncio.gather(*queued), *refused]

    server.hold()
    try:
        responses = asyncio.run(main())
    finally:
        server.release()
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 503, 503, 503, 503], codes
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and busy.json()["error"] == "queue_full"
    after = http_post(url, content=body, headers={"content-type": "image/png"}, timeout=30)
    assert after.status_code == 200
    metrics = http_get(servers["slow"].url + "/metrics").text
    assert metric(metrics, "pochi_queue_rejected_total") == 4
    assert 'pochi_requests_total{path="/api/v1/predict",status="503"} 4.0' in metrics


def test_metrics_docs_info_and_access_log(servers: dict[str, Server]) -> None:
    base = servers["pth"].url
    http_post(base + PREDICT, content=b"x", headers={"content-type": "text/plain"})
    metrics = http_get(base + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("pochi_requests_total", "pochi_request_seconds_bucket",
                 "pochi_batch_size_bucket", "pochi_queue_depth"):
        assert name in metrics.text
    assert http_get(base + "/docs").status_code == 200
    spec = http_get(base + "/openapi.json").json()
    assert {"application/json", "multipart/form-data"} <= set(
        spec["paths"][PREDICT]["post"]["requestBody"]["content"])
    info = http_get(base + "/api/v1/model-info").json()
    assert info["class_names"] == [str(i) for i in range(10)] and info["backend"] == "pytorch"
    version = http_get(base + "/api/v1/version").json()
    assert version["api_version"] == "1.0.0" and "pytorch" in version["backend_versions"]
    assert {"pochitrain_version", "api_version", "backend_versions"} == set(version)
    assert {"pytorch", "python"} <= set(version["backend_versions"])
    health = http_get(base + "/api/v1/health").json()
    assert health == {"status": "healthy", "model_loaded": True, "backend": "pytorch"}
    log = servers["pth"].log.read_text()
    assert f'"POST {PREDICT} HTTP/1.1" 415' in log


def test_sigterm_drains_in_flight_requests(servers: dict[str, Server],
                                           images: list[Path]) -> None:
    server = servers["slow"]  # gated: both queued requests are in flight at SIGTERM
    url = server.url + PREDICT
    body = images[0].read_bytes()

    async def main() -> list[int]:
        async with httpx.AsyncClient(timeout=30, verify=TLS) as client:
            tasks = [asyncio.ensure_future(client.post(
                url, content=body, headers={"content-type": "image/png"})) for _ in range(2)]
            await server.wait_metric("pochi_queue_depth", lambda n: n == 2)
            server.proc.send_signal(signal.SIGTERM)
            await server.wait_closed()
            server.release()
            return [r.status_code for r in await asyncio.gather(*tasks)]

    server.hold()
    try:
        assert asyncio.run(main()) == [200] * 2
    finally:
        server.release()
    assert server.proc.wait(20) == 0
    assert "Server stopped (SIGTERM)" in server.log.read_text()
    with pytest.raises(httpx.ConnectError):
        http_get(server.url + "/api/v1/health", timeout=2)


def test_gpu_pipeline_code_matches_cpu_pipeline(untrained_checkpoint: Path,
                                                images: list[Path]) -> None:
    """The GPU input path (nvJPEG decode, batched resize) runs its same code on the CPU."""
    from pochitrain.gpu_input import GpuBatches
    from pochitrain.serve.decode import Payload
    from pochitrain.serve.model import ForGpu, ServeModel

    model = ServeModel(untrained_checkpoint, device="cpu", max_batch=8, pipeline="cpu")
    try:
        payloads = [Payload(p.name, data=_jpeg(p)) for p in images[:6]]
        cpu = model.run_batch([model.prepare(p) for p in payloads])
        model.gpu = GpuBatches(model.preprocess, "cpu", workers=1)
        prepared = [model.prepare(p) for p in payloads]
        assert [item[0] for item in prepared] == ["jpeg"] * 6  # left for nvJPEG
        # a JPEG whose header and end marker look right but that neither decoder reads
        bad = ForGpu("jpeg", b"\xff\xd8\xff" + bytes(50) + b"\xff\xd9", "bad.jpg")
        gpu = model.run_batch([*prepared, bad])
    finally:
        model.close()
    assert type(gpu[6]).__name__ == "BadInput" and gpu[6].status == 400
    for a, b in zip(cpu, gpu[:6]):
        assert np.abs(a - b).max() < 5e-3


def test_missing_extra_names_it(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"")  # a model file is there: the extra is what lacks
    code = ("import sys\nsys.modules['fastapi'] = None\n"
            "from pochitrain.cli.main import run\n"
            f"sys.exit(run(['serve', {str(tmp_path / 'm.onnx')!r}]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 1
    assert 'pip install "pochitrain[serve]"' in out.stderr


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _workers_of(server: Server) -> tuple[list[int], Path]:
    """The worker pids (spawned pochi-serve workers) and their shared metrics dir."""
    pids, metrics_dir = [], None
    for pid in _children(server.proc.pid):
        env = dict(x.split("=", 1) for x in Path(f"/proc/{pid}/environ").read_text(
            errors="replace").split("\0") if "=" in x)
        if "PROMETHEUS_MULTIPROC_DIR" in env and "resource_tracker" not in Path(
                f"/proc/{pid}/cmdline").read_text(errors="replace"):
            pids.append(pid)
            metrics_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    assert metrics_dir is not None, "no worker process found"
    return pids, metrics_dir


async def _separate_connections(url: str, body: bytes, n: int) -> list[int]:
    """``n`` concurrent requests, each on its own connection (the kernel picks the worker)."""
    async def one() -> int:
        async with httpx.AsyncClient(timeout=30, verify=TLS) as client:
            r = await client.post(url, content=body, headers={"content-type": "image/png"})
            return r.status_code

    return await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_answer_like_infer_and_metrics_sum_them(
        servers: dict[str, Server], onnx_model: Path, images: list[Path]) -> None:
    server = servers["workers"]
    want = _reference(onnx_model, images)
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images]
    got = http_post(server.url + PREDICT, files=files, data={"top_k": "3"}, timeout=30).json()
    for pred, ref in zip(got["predictions"], want):
        _check(pred, ref)
    codes = asyncio.run(_separate_connections(server.url + PREDICT, images[0].read_bytes(), 16))
    assert codes == [200] * 16
    pids, _ = _workers_of(server)
    served = {int(line.split("[", 1)[1].split("]", 1)[0])
              for line in server.log.read_text().splitlines() if f"POST {PREDICT}" in line}
    assert len(pids) == 2 and served == set(pids), (pids, served)  # both workers answered
    metrics = http_get(server.url + "/metrics").text  # one worker answers for all
    assert 'pochi_requests_total{path="/api/v1/predict",status="200"} 17.0' in metrics
    assert metric(metrics, "pochi_images_total") == len(images) + 16
    assert metric(metrics, "pochi_queue_depth") == 0
    assert "2 worker processes" in server.log.read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_sigterm_drains_all_and_leaves_nothing(servers: dict[str, Server],
                                                       images: list[Path]) -> None:
    server = servers["workers"]
    pids, metrics_dir = _workers_of(server)
    assert metrics_dir.is_dir()

    async def main() -> list[int]:
        clients = [httpx.AsyncClient(timeout=30, verify=TLS) for _ in range(8)]
        try:  # connections accepted first, so the requests are read before the SIGTERM
            await asyncio.gather(*(c.get(server.url + "/api/v1/health") for c in clients))
            tasks = [asyncio.ensure_future(c.post(
                server.url + PREDICT, content=images[0].read_bytes(),
                headers={"content-type": "image/png"})) for c in clients]
            # in flight: the gate holds them, /metrics sums both workers' queues
            await server.wait_metric("pochi_queue_depth", lambda n: n == 8)
            server.proc.send_signal(signal.SIGTERM)
            await server.wait_closed()
            server.release()
            return [r.status_code for r in await asyncio.gather(*tasks)]
        finally:
            for c in clients:
                await c.aclose()

    server.hold()
    try:
        assert asyncio.run(main()) == [200] * 8
    finally:
        server.release()
    assert server.proc.wait(20) == 0
    assert "Server stopped (SIGTERM); 2 workers" in server.log.read_text()
    end = time.monotonic() + 30  # a hang guard: the parent has already joined them
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids), "orphan worker"
    assert not metrics_dir.exists()


def test_workers_bad_model_fails_like_one_process(tmp_path: Path,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    """Run here: --workers 2 still spawns its two worker processes, whose output (a
    traceback included) reaches the captured file descriptors."""
    from pochitrain.cli.main import run

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    codes, errs = [], []
    for extra in ([], ["--workers", "2"]):
        codes.append(run(["serve", str(bad), "--port", str(free_port()), *extra]))
        errs.append(capfd.readouterr().err)
    one, two = errs
    assert codes == [1, 1]
    assert "bad.onnx" in one and "Traceback" not in two and two.strip() == one.strip()


def test_shared_model_option_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    """--shared-model was removed: argparse refuses it like any unknown option."""
    from pochitrain.cli.main import build_parser

    parser = build_parser("pochi", None, "serve")
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["serve", "m.onnx", "--workers", "2", "--shared-model"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --shared-model" in capsys.readouterr().err

"""pochi serve against hostile clients, over real HTTP: half-open connections, stalled and
abandoned uploads, many large bodies at once, SIGTERM with requests stuck; its options.

One gated .onnx server starts for the module (``POCHI_SERVE_TEST_GATE``: while the gate file
exists its model thread runs no batch, so requests stay in flight until the test says so)
with small limits: 1 MB bodies, 2 MB of bodies in flight, 20 requests in flight, a 2 s read
timeout and a 0.5 s drain. Its environment names a shared PROMETHEUS_MULTIPROC_DIR that holds
another program's metrics, and a missing folder in its older lower-case spelling. The SIGTERM test stops it, so it runs last. No test waits for a
duration: they wait for what the server reports (/metrics) or for its answers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serving import TLS, Server, http_get

PREDICT = "/api/v1/predict"
HANG_GUARD_S = 60
BIG_SIDE = 380  # a raw 380x380 image: a JSON body of about 0.58 MB


class Served(Server):
    """A gated server (tests/serving.py) with its /metrics at hand."""

    metric_wait_s = HANG_GUARD_S

    def metrics(self) -> str:
        return http_get(self.url + "/metrics", timeout=HANG_GUARD_S).text

    async def raw(self, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(data)
        await writer.drain()
        return reader, writer


def metric(text: str, name: str) -> float:
    """A series' value (``name`` with its labels, as /metrics writes it); 0 if absent."""
    for line in text.splitlines():
        if line.startswith(name + " ") or ("{" not in name and line.startswith(name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def answer(data: bytes) -> tuple[int, dict[str, str]]:
    """(status, JSON body) of a raw HTTP/1.1 answer."""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def big_body() -> bytes:
    pixels = bytes(range(256)) * (BIG_SIDE * BIG_SIDE * 3 // 256 + 1)
    return json.dumps({"image_data": base64.b64encode(pixels[:BIG_SIDE * BIG_SIDE * 3])
                       .decode(), "format": "raw", "shape": [BIG_SIDE, BIG_SIDE, 3]}).encode()


def partial_upload(length: int, sent: bytes) -> bytes:
    return (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode() + sent


@pytest.fixture(scope="module")
def server(untrained_checkpoint: Path, onnx_export: Callable[..., Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("serve_limits")
    shared = folder / "shared_metrics"
    shared.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    other = "import prometheus_client as p; p.Counter('pochi_images', 'x').inc(1000)"
    subprocess.run([sys.executable, "-c", other],
                   env=env, check=True, timeout=HANG_GUARD_S)
    env["prometheus_multiproc_dir"] = str(folder / "missing")
    served = Served(onnx_export(untrained_checkpoint), folder / "server.log", "--decode-workers",
                    "1", "--queue", "16", "--max-body-mb", "1", "--max-inflight-mb", "2",
                    "--max-concurrent", "20", "--read-timeout", "2", "--drain-timeout", "0.5", gated=True, env=env)
    try:
        served.wait_ready()
        yield served
    finally:
        served.gate.unlink(missing_ok=True)
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait(HANG_GUARD_S)


def test_half_open_connections_and_stalled_bodies_get_408(server: Served) -> None:
    """50 connections that send half a request head, more than --max-concurrent, do not keep
    a new client from /health; they, and an upload that stalls, get 408 read_timeout. Bytes
    that are not HTTP get a JSON 400."""
    async def main() -> None:
        reader, _ = await server.raw(b"NOT HTTP AT ALL\x00\r\n\r\n")
        status, body = answer(await asyncio.wait_for(reader.read(), HANG_GUARD_S))
        assert (status, body["error"]) == (400, "bad_http")
        half_open = [await server.raw(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\n".encode())
                     for _ in range(50)]
        stalled = await server.raw(partial_upload(1000, b'{"image_data": "'))
        async with httpx.AsyncClient(timeout=HANG_GUARD_S, verify=TLS) as client:
            health = await client.get(server.url + "/api/v1/health")
        assert health.status_code == 200 and health.json()["status"] == "healthy"
        for reader, writer in [*half_open, stalled]:
            status, body = answer(await asyncio.wait_for(reader.read(), HANG_GUARD_S))
            assert (status, body["error"]) == (408, "read_timeout")
            assert "--read-timeout" in body["detail"]
            writer.close()

    asyncio.run(main())
    text = server.metrics()
    assert metric(text, f'pochi_requests_total{{path="{PREDICT}",status="408"}}') == 1


def test_large_bodies_beyond_the_inflight_budget_get_503_busy(server: Served) -> None:
    """Bodies are admitted by Content-Length before they are read: with 2 MB in flight,
    3 bodies of 0.58 MB are held (the gate keeps them) and 6 more are refused, readable.
    A body far over --max-body-mb sent whole (more than socket buffers hold) reads its 413
    too: the server drops the rest of the body instead of resetting the connection."""
    body = big_body()
    headers = {"content-type": "application/json"}

    async def huge() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=HANG_GUARD_S, verify=TLS) as client:
            return list(await asyncio.gather(*(client.post(
                server.url + PREDICT, content=bytes(20_000_000), headers=headers)
                for _ in range(4))))

    assert {(r.status_code, r.json()["error"]) for r in asyncio.run(huge())} \
        == {(413, "body_too_large")}

    async def main() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(timeout=HANG_GUARD_S, verify=TLS) as client:
            held = [asyncio.ensure_future(client.post(server.url + PREDICT, content=body,
                                                      headers=headers)) for _ in range(3)]
            await server.wait_metric("pochi_queue_depth", lambda n: n == 3)
            in_flight = metric(server.metrics(), "pochi_body_bytes_in_flight")
            assert in_flight == 3 * len(body)
            refused = await asyncio.gather(*(client.post(
                server.url + PREDICT, content=body, headers=headers) for _ in range(6)))
            assert (await client.get(server.url + "/api/v1/health")).status_code == 200
            server.gate.unlink()
            return list(await asyncio.gather(*held)), list(refused)

    server.gate.write_text("")
    held, refused = asyncio.run(main())
    assert [r.status_code for r in held] == [200] * 3
    assert {(r.status_code, r.json()["error"], r.headers["retry-after"]) for r in refused} \
        == {(503, "busy", "1")}
    assert "--max-inflight-mb" in refused[0].json()["detail"]
    assert metric(server.metrics(), "pochi_body_bytes_in_flight") == 0


def test_client_gone_mid_upload_is_499_without_traceback(server: Served) -> None:
    async def main() -> None:
        _, writer = await server.raw(partial_upload(100_000, b'{"image_data": "AAAA'))
        writer.close()
        await server.wait_metric(f'pochi_requests_total{{path="{PREDICT}",status="499"}}',
                                 lambda n: n == 1)

    asyncio.run(main())
    text = server.metrics()
    assert metric(text, f'pochi_requests_total{{path="{PREDICT}",status="500"}}') == 0
    assert f'"POST {PREDICT} HTTP/1.1" 499' in server.log.read_text()


def test_metrics_ignore_a_shared_multiproc_dir(server: Served) -> None:
    """The other program's 1000 images in the shared folder are not this server's; the
    missing folder stopped nothing."""
    assert metric(server.metrics(), "pochi_images_total") < 1000
    assert [p.name for p in (server.log.parent / "shared_metrics").iterdir()] \
        == [p.name for p in (server.log.parent / "shared_metrics").glob("counter_*.db")]


def test_sigterm_cuts_stuck_requests_at_the_drain_timeout(server: Served) -> None:
    """Runs last. A request held in the model thread (the gate stays shut) and three stalled
    uploads: SIGTERM with --drain-timeout 0.5 answers each with JSON, the process exits 0
    without waiting for the model thread, and no traceback is printed."""
    async def main() -> list[tuple[int, str]]:
        async with httpx.AsyncClient(timeout=HANG_GUARD_S, verify=TLS) as client:
            held = asyncio.ensure_future(client.post(
                server.url + PREDICT, content=big_body(),
                headers={"content-type": "application/json"}))
            await server.wait_metric("pochi_queue_depth", lambda n: n == 1)
            before = metric(server.metrics(), "pochi_body_bytes_in_flight")
            stalled = [await server.raw(partial_upload(10_000, b"{")) for _ in range(3)]
            await server.wait_metric("pochi_body_bytes_in_flight",
                                     lambda n: n == before + 30_000)
            server.proc.send_signal(signal.SIGTERM)
            answers = [answer(await asyncio.wait_for(r.read(), HANG_GUARD_S))
                       for r, _ in stalled]
            response = await held
        return [(s, b["error"]) for s, b in answers] + [(response.status_code,
                                                          response.json()["error"])]

    server.gate.write_text("")
    answers = asyncio.run(main())
    assert set(answers) <= {(503, "shutting_down"), (408, "read_timeout")}
    assert answers[-1] == (503, "shutting_down")
    assert server.proc.wait(HANG_GUARD_S) == 0
    log = server.log.read_text()
    assert "Server stopped (SIGTERM)" in log and "Traceback" not in log, log
    assert "A model call was still running; not waited for" in log


def test_serve_options_are_checked(untrained_checkpoint: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Out-of-range ports (with --workers too), non-positive sizes and timeouts are usage
    errors before anything starts; the IPv6 banner writes its address in brackets."""
    from pochitrain.cli.main import run
    from pochitrain.errors import UsageError
    from pochitrain.serve.app import ServeSettings
    from pochitrain.serve.server import ServeOptions, banner
    from pochitrain.serve.workers import serve

    model = str(untrained_checkpoint)
    for args in (["--port", "70000"], ["--workers", "2", "--port", "70000"],
                 ["--port", "0"], ["--max-body-mb", "0"], ["--max-body-mb", "-1"],
                 ["--read-timeout", "0"], ["--drain-timeout", "nan"],
                 ["--max-inflight-mb", "inf"]):
        with pytest.raises(SystemExit) as exited:
            run(["serve", model, *args])
        assert exited.value.code == 2, args
        err = capsys.readouterr().err
        assert "error: argument" in err and "in use" not in err, (args, err)
    with pytest.raises(UsageError, match="out of range"):
        serve(ServeOptions(Path(model), port=70000, workers=2), ServeSettings())
    banner(ServeOptions(Path(model), host="::1"), ServeSettings(),
           {"backend": "onnx", "device": "cpu", "num_classes": 10, "input_size": [32, 32],
            "pipeline": "cpu"})
    assert "http://[::1]:8000/api/v1/predict" in capsys.readouterr().out


def test_stale_metrics_folders_are_removed(tmp_path: Path) -> None:
    """A folder left by a killed --workers server (its pid gone) is removed at the next
    start; a live server's folder and other folders stay."""
    from pochitrain.serve.workers import METRICS_PREFIX, remove_stale_metrics_folders

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(HANG_GUARD_S)
    stale = tmp_path / f"{METRICS_PREFIX}{gone.pid}_abc"
    live = tmp_path / f"{METRICS_PREFIX}{os.getppid()}_def"
    other = tmp_path / "pochi_serve_metrics_notapid"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"x")
    assert remove_stale_metrics_folders(tmp_path) == [stale]
    assert not stale.exists() and live.is_dir() and other.is_dir()

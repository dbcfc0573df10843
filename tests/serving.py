"""``pochi serve`` in a subprocess on a free port, for the HTTP tests (test_serve.py).

conftest.py starts test_serve's servers as the session begins (``started_servers``), so their
start-up (Python, torch, ONNX Runtime) runs beside the other tests; the tests wait until each
answers /api/v1/health.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from background import HANG_GUARD_S

from pochitrain.serve.batcher import GATE_ENV

if TYPE_CHECKING:
    import httpx

# One TLS context for every client of the suite: httpx builds a default one per client
# (httpx.get / post make a client per call), loading the CA bundle each time, about 45 ms of
# CPU per request or readiness poll; the servers here are plain http:// anyway.
TLS = ssl.create_default_context()


def http_get(url: str, **kwargs: Any) -> httpx.Response:
    """``httpx.get`` with the suite's TLS context."""
    import httpx

    return httpx.get(url, verify=TLS, **kwargs)


def http_post(url: str, **kwargs: Any) -> httpx.Response:
    """``httpx.post`` with the suite's TLS context."""
    import httpx

    return httpx.post(url, verify=TLS, **kwargs)


def metric(text: str, name: str) -> float:
    """The value of metric ``name`` in a /metrics text."""
    value = find_metric(text, name)
    assert value is not None, f"no {name} in /metrics"
    return value


def find_metric(text: str, name: str) -> float | None:
    """The value of metric ``name``, or None while it has no line (a labelled counter gets
    its line when first counted)."""
    line = next((x for x in text.splitlines() if x.startswith((name + " ", name + "{"))), None)
    return None if line is None else float(line.rsplit(" ", 1)[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    metric_wait_s = 30.0  # how long wait_metric polls /metrics before the test fails

    def __init__(self, model: Path, log: Path, *args: str, gated: bool = False,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.gate = log.with_suffix(".gate")
        env = {**(os.environ if env is None else env), GATE_ENV: str(self.gate) if gated else ""}
        # full priority (not background.lowest_priority): started with the session, a server
        # must be up when its module runs, while the low-priority jobs still fill the cores
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pochitrain.cli.main", "serve", str(model),
             "--port", str(self.port), "--decode-workers", "2", *args],
            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = HANG_GUARD_S) -> Server:
        """Until /api/v1/health answers 200; fails at once if the server exits (the timeout
        is a hang guard only)."""
        import httpx

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if http_get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"server not ready:\n{self.log.read_text()}")

    def hold(self, until_waiting: int | None = None) -> None:
        """Close the gate: no model batch runs (with a count: until that many images wait)."""
        self.gate.write_text("" if until_waiting is None else str(until_waiting))

    def release(self) -> None:
        self.gate.unlink(missing_ok=True)

    async def wait_metric(self, name: str, done: Callable[[float], bool]) -> float:
        """Poll /metrics every 10 ms until ``done(value)``; the value."""
        import httpx

        async with httpx.AsyncClient(timeout=self.metric_wait_s, verify=TLS) as client:
            for _ in range(int(self.metric_wait_s * 100)):
                value = find_metric((await client.get(self.url + "/metrics")).text, name)
                if value is not None and done(value):
                    return value
                await asyncio.sleep(0.01)
        pytest.fail(f"{name} on {self.url} never reached the expected value")

    async def wait_closed(self) -> None:
        """Until the listening socket refuses connections (a SIGTERM is being handled)."""
        for _ in range(3000):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return
            writer.close()
            await asyncio.sleep(0.01)
        pytest.fail(f"{self.url} still accepts connections")

    def terminate(self) -> None:
        self.release()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()



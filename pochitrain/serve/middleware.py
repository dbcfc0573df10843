"""Pure ASGI middleware around the whole app: admission and limits before any body byte is
read, per-request metrics and one access-log line per request.

- Body size (413 ``body_too_large``): a ``Content-Length`` over the limit is refused before
  any byte is read, a chunked body at the limit. The connection stays: uvicorn drops the rest
  of the body (bounded by the read timeout), so a client that sends it all first still reads
  the answer instead of a reset.
- Bytes in flight (503 ``busy`` + Retry-After): the bodies of this process's requests share
  one budget, reserved from ``Content-Length`` before the body is read (chunked: as it comes).
- Requests in flight (503 ``busy``): requests whose head has arrived, not half-open
  connections.
- Read timeout (408 ``read_timeout``): a body that stalls longer than the timeout between two
  chunks (a stalled request head is ``serve.server``'s).
- Client gone mid-upload: no answer, no traceback, counted as status 499. Cut by the drain
  timeout: JSON 503 ``shutting_down``. Anything else the app raises: JSON 500
  ``internal_error`` and one log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import Message

from pochitrain.serve.decode import BadInput
from pochitrain.serve.metrics import Metrics
from pochitrain.serve.schemas import ServeSettings

access_log = logging.getLogger("pochitrain.serve.access")
server_log = logging.getLogger("pochitrain.serve")
CLIENT_CLOSED = 499  # nginx's status for a client that closed the connection first
INFLIGHT_REQUESTS_PER_QUEUE = 16  # default byte budget: this many largest bodies
CLOSE = {"connection": "close"}  # the unread rest of the body is never read


def effective_limits(settings: ServeSettings) -> tuple[int, int]:
    """(body bytes in flight, requests in flight) at most. Defaults (settings at 0): the
    bodies of ``min(queue, 16)`` largest requests; ``max(1024, 2 x queue)`` requests. The
    byte budget always fits one largest body."""
    max_body = settings.max_body_bytes
    budget = (settings.max_inflight_bytes
              or max_body * max(1, min(settings.queue, INFLIGHT_REQUESTS_PER_QUEUE)))
    return max(budget, max_body), settings.max_requests or max(1024, 2 * settings.queue)


class ClientGone(Exception):
    """The client closed the connection before its body was complete."""


def busy(code: str, ja: str, en: str, retry_after_s: int) -> BadInput:
    return BadInput(503, code, f"サーバーが混み合っています ({ja})。しばらくして再送してください。",
                    f"The server is busy: {en}. Retry after the Retry-After seconds.",
                    headers={"Retry-After": str(retry_after_s)})


def read_timeout(seconds: float) -> BadInput:
    return BadInput(408, "read_timeout", f"リクエストの受信が {seconds:g} 秒間止まったため打ち切り"
                    "ました。", f"No part of the request arrived for {seconds:g} s "
                    "(--read-timeout), so it was dropped: send the whole request without "
                    "pauses.", headers=CLOSE)


def internal_error() -> BadInput:
    return BadInput(500, "internal_error", "サーバー内部でエラーが発生しました。",
                    "The server failed on this request (its log has a line on it): send it "
                    "again; if it fails again, report the request.", headers=CLOSE)


def shutting_down() -> BadInput:
    return BadInput(503, "shutting_down",
                    "サーバーが停止中のため、このリクエストは打ち切られました。",
                    "The server is stopping and this request did not finish within "
                    "--drain-timeout: send it again (to another server).", headers=CLOSE)


@dataclass
class Exchange:
    """One request's side of the middleware: its receive / send and what it holds."""

    limits: LimitAndLog
    receive_next: Any
    send_next: Any
    status: int = 500
    started: bool = False
    reserved: int = 0  # bytes of the budget this request holds
    received: int = 0
    body_done: bool = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.started = True
        await self.send_next(message)

    async def receive(self) -> dict[str, Any]:
        if self.body_done:  # only a disconnect can come now: no timeout
            return await self.receive_next()  # type: ignore[no-any-return]
        timeout = self.limits.settings.read_timeout_s
        try:
            message: dict[str, Any] = await asyncio.wait_for(self.receive_next(), timeout)
        except asyncio.TimeoutError:
            raise read_timeout(timeout) from None
        if message["type"] == "http.disconnect":
            raise ClientGone
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limits.settings.max_body_bytes:
                raise self.limits.too_large()
            if self.received > self.reserved:  # chunked: reserve as it arrives
                self.reserve(self.received - self.reserved)
            self.body_done = not message.get("more_body", False)
        return message

    def reserve(self, n: int) -> None:
        limits = self.limits
        if n > 0 and limits.inflight_bytes + n > limits.max_inflight:
            mb = limits.max_inflight / 1e6
            raise busy("busy", f"受信中の本文が上限 {mb:g} MB に達しています",
                       f"the request bodies being received take its budget of {mb:g} MB "
                       "(--max-inflight-mb)", limits.settings.retry_after_s)
        limits.inflight_bytes += n
        limits.metrics.body_bytes.inc(n)
        self.reserved += n


@dataclass
class LimitAndLog:
    app: Any
    settings: ServeSettings
    metrics: Metrics
    routes: set[str]
    inflight_bytes: int = field(default=0, init=False)  # reserved by requests in flight
    active: int = field(default=0, init=False)  # requests in flight

    def __post_init__(self) -> None:
        self.max_inflight, self.max_requests = effective_limits(self.settings)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        ex = Exchange(self, receive, send)
        self.active += 1
        try:
            refusal = await self.run(scope, ex)
            if refusal is not None and not ex.started:
                await JSONResponse(refusal.body(), refusal.status, refusal.headers)(
                    scope, receive, ex.send)
        finally:
            self.active -= 1
            self.inflight_bytes -= ex.reserved
            self.metrics.body_bytes.dec(ex.reserved)
            self._record(scope, ex.status, time.perf_counter() - start)

    async def run(self, scope: dict[str, Any], ex: Exchange) -> BadInput | None:
        """Run the request; the refusal to answer with if it did not run to an answer."""
        try:
            await self.admit_and_run(scope, ex)
        except BadInput as exc:
            return exc
        except ClientGone:
            ex.status = CLIENT_CLOSED
        except asyncio.CancelledError:  # uvicorn cut the request at the drain timeout
            return shutting_down()
        except Exception as exc:  # noqa: BLE001 - a bug: one log line and a JSON 500
            server_log.error("%s %s: %s: %s", scope.get("method", "-"), scope.get("path", ""),
                             type(exc).__name__, str(exc)[:300])
            return internal_error()
        return None

    async def admit_and_run(self, scope: dict[str, Any], ex: Exchange) -> None:
        try:
            declared = max(0, int(Headers(scope=scope).get("content-length", 0)))
        except ValueError:
            declared = 0
        if declared > self.settings.max_body_bytes:
            raise self.too_large()
        if self.active > self.max_requests:
            raise busy("busy", f"処理中のリクエストが上限 {self.max_requests} 件に達しています",
                       f"{self.max_requests} requests are in flight, its limit "
                       "(--max-concurrent)", self.settings.retry_after_s)
        ex.reserve(declared)
        await self.app(scope, ex.receive, ex.send)

    def too_large(self) -> BadInput:
        limit = self.settings.max_body_bytes
        return BadInput(413, "body_too_large", f"リクエストが大きすぎます (上限 {limit / 1e6:g} MB)。",
                        f"The request body is larger than the limit of {limit / 1e6:g} MB "
                        f"({limit} bytes); send fewer or smaller images, or start the server "
                        "with a larger --max-body-mb.")

    def _record(self, scope: dict[str, Any], status: int, seconds: float) -> None:
        path = scope.get("path", "")
        # unknown paths (scanners) share one label: unbounded label sets would grow forever
        label = path if path in self.routes else "other"
        if self.settings.access_log:  # logged first: whoever sees the count finds the line
            client = scope.get("client") or ("-", 0)
            access_log.info('%s:%s "%s %s HTTP/%s" %d %.1fms', client[0], client[1],
                            scope.get("method", "-"), path, scope.get("http_version", "1.1"),
                            status, seconds * 1000.0)
        self.metrics.observe_request(label, status, seconds)

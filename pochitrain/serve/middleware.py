"""Pure ASGI middleware around the whole app: admission and limits before any body byte is
read, per-request metrics and one access-log line per request.

- Body size (413 ``body_too_large``): a ``Content-Length`` over the limit is answered before
  any byte is read; a chunked body is counted as it streams in and cut off at the limit.
  Refusals keep the connection: uvicorn reads and drops the rest of the body (held to the
  read timeout by ``serve.server``), so a client that sends its whole body first still
  reads the answer instead of a reset connection.
- Bytes in flight (503 ``busy`` + Retry-After): the bodies being received or held by the
  requests of this process share one budget. A request reserves its ``Content-Length``
  before its body is read (chunked bodies reserve chunk by chunk); one that does not fit is
  refused at once.
- Requests in flight (503 ``busy``): requests whose head has arrived; half-open
  connections do not count.
- Read timeout (408 ``read_timeout``): a body that stalls longer than the timeout between
  two chunks. A stalled request head is the connection protocol's (``serve.server``).
- Client gone mid-upload: no answer, no traceback, counted as status 499.
- Cut by the drain timeout on SIGTERM: JSON 503 ``shutting_down`` instead of a traceback.
- Anything else the app raises: JSON 500 ``internal_error`` and one log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from pochitrain.serve.metrics import Metrics

access_log = logging.getLogger("pochitrain.serve.access")
server_log = logging.getLogger("pochitrain.serve")
CLIENT_CLOSED = 499  # nginx's status for a client that closed the connection first
INFLIGHT_REQUESTS_PER_QUEUE = 16  # default byte budget: this many largest bodies


class ServeLimits(Protocol):
    """The fields of ``serve.app.ServeSettings`` read here (app imports this module)."""

    max_body_bytes: int
    max_inflight_bytes: int
    max_requests: int
    queue: int
    read_timeout_s: float
    retry_after_s: int
    access_log: bool


def effective_limits(settings: ServeLimits) -> tuple[int, int]:
    """(body bytes in flight, requests in flight) at most. Defaults (settings at 0): the
    bodies of ``min(queue, 16)`` largest requests; ``max(1024, 2 x queue)`` requests. The
    byte budget always fits one largest body."""
    max_body = settings.max_body_bytes
    budget = (settings.max_inflight_bytes
              or max_body * max(1, min(settings.queue, INFLIGHT_REQUESTS_PER_QUEUE)))
    return max(budget, max_body), settings.max_requests or max(1024, 2 * settings.queue)


class Refusal(Exception):
    """An answer the middleware gives instead of the app's."""

    def __init__(self, status: int, code: str, text: str, close: bool = False,
                 retry_after: int | None = None) -> None:
        super().__init__(text)
        self.status, self.code, self.text = status, code, text
        self.close, self.retry_after = close, retry_after


class ClientGone(Exception):
    """The client closed the connection before its body was complete."""


def error_json(code: str, text: str) -> bytes:
    return json.dumps({"detail": text, "error": code}, ensure_ascii=False).encode()


def read_timeout_text(seconds: float) -> str:
    return (f"リクエストの受信が {seconds:g} 秒間止まったため打ち切りました。\n"
            f"No part of the request arrived for {seconds:g} s (--read-timeout), so it was "
            "dropped: send the whole request without pauses.")


def internal_error() -> Refusal:
    return Refusal(500, "internal_error",
                   "サーバー内部でエラーが発生しました。\n"
                   "The server failed on this request (its log has a line on it): send it "
                   "again; if it fails again, report the request.", close=True)


def shutting_down() -> Refusal:
    return Refusal(503, "shutting_down",
                   "サーバーが停止中のため、このリクエストは打ち切られました。\n"
                   "The server is stopping and this request did not finish within "
                   "--drain-timeout: send it again (to another server).", close=True)


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

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.started = True
        await self.send_next(message)

    async def receive(self) -> dict[str, Any]:
        if self.body_done:  # only a disconnect can come now: no timeout
            return await self.receive_next()  # type: ignore[no-any-return]
        timeout = self.limits.read_timeout
        try:
            message: dict[str, Any] = await asyncio.wait_for(self.receive_next(), timeout)
        except asyncio.TimeoutError:
            raise Refusal(408, "read_timeout", read_timeout_text(timeout), close=True) from None
        if message["type"] == "http.disconnect":
            raise ClientGone
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limits.max_body:
                raise self.limits.too_large()
            if self.received > self.reserved:  # chunked: reserve as it arrives
                self.reserve(self.received - self.reserved)
            self.body_done = not message.get("more_body", False)
        return message

    def reserve(self, n: int) -> None:
        limits = self.limits
        if n > 0 and limits.inflight_bytes + n > limits.max_inflight:
            raise limits.busy(f"受信中の本文が上限 {limits.max_inflight / 1e6:g} MB に達しています",
                              f"the request bodies being received take its budget of "
                              f"{limits.max_inflight / 1e6:g} MB (--max-inflight-mb)")
        limits.inflight_bytes += n
        limits.metrics.body_bytes.inc(n)
        self.reserved += n

    async def answer(self, refusal: Refusal) -> None:
        body = error_json(refusal.code, refusal.text)
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        if refusal.retry_after is not None:
            headers.append((b"retry-after", str(refusal.retry_after).encode()))
        if refusal.close:  # the unread rest of the body is never read
            headers.append((b"connection", b"close"))
        await self.send({"type": "http.response.start", "status": refusal.status,
                         "headers": headers})
        await self.send({"type": "http.response.body", "body": body})


@dataclass
class LimitAndLog:
    app: Any
    settings: ServeLimits
    metrics: Metrics
    routes: set[str]
    inflight_bytes: int = field(default=0, init=False)  # reserved by requests in flight
    active: int = field(default=0, init=False)  # requests in flight

    def __post_init__(self) -> None:
        s = self.settings
        self.max_body = s.max_body_bytes
        self.max_inflight, self.max_requests = effective_limits(s)
        self.read_timeout = s.read_timeout_s
        self.retry_after_s = s.retry_after_s
        self.log = s.access_log

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        ex = Exchange(self, receive, send)
        self.active += 1
        try:
            await self.admit_and_run(scope, ex)
        except Refusal as refusal:
            if not ex.started:
                await ex.answer(refusal)
        except ClientGone:
            ex.status = CLIENT_CLOSED
        except asyncio.CancelledError:  # uvicorn cut the request at the drain timeout
            if not ex.started:
                await ex.answer(shutting_down())
        except Exception as exc:  # noqa: BLE001 - a bug: one log line and a JSON 500
            server_log.error("%s %s: %s: %s", scope.get("method", "-"), scope.get("path", ""),
                             type(exc).__name__, str(exc)[:300])
            if not ex.started:
                await ex.answer(internal_error())
        finally:
            self.active -= 1
            self.inflight_bytes -= ex.reserved
            self.metrics.body_bytes.dec(ex.reserved)
            self._record(scope, ex.status, time.perf_counter() - start)

    async def admit_and_run(self, scope: dict[str, Any], ex: Exchange) -> None:
        if self._declared_length(scope) > self.max_body:
            raise self.too_large()
        if self.active > self.max_requests:
            raise self.busy(f"処理中のリクエストが上限 {self.max_requests} 件に達しています",
                            f"{self.max_requests} requests are in flight, its limit "
                            "(--max-concurrent)")
        ex.reserve(self._declared_length(scope))
        await self.app(scope, ex.receive, ex.send)

    def busy(self, ja: str, en: str) -> Refusal:
        return Refusal(503, "busy", f"サーバーが混み合っています ({ja})。しばらくして再送してく"
                       f"ださい。\nThe server is busy: {en}. Retry after the Retry-After "
                       "seconds.", retry_after=self.retry_after_s)

    def too_large(self) -> Refusal:
        mb = self.max_body / 1e6
        return Refusal(413, "body_too_large",
                       f"リクエストが大きすぎます (上限 {mb:g} MB)。\n"
                       f"The request body is larger than the limit of {mb:g} MB "
                       f"({self.max_body} bytes); send fewer or smaller images, or start the "
                       "server with a larger --max-body-mb.")

    @staticmethod
    def _declared_length(scope: dict[str, Any]) -> int:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    return max(0, int(value))
                except ValueError:
                    return 0
        return 0

    def _record(self, scope: dict[str, Any], status: int, seconds: float) -> None:
        path = scope.get("path", "")
        # unknown paths (scanners) share one label: unbounded label sets would grow forever
        label = path if path in self.routes else "other"
        self.metrics.observe_request(label, status, seconds)
        if self.log:
            client = scope.get("client") or ("-", 0)
            access_log.info('%s:%s "%s %s HTTP/%s" %d %.1fms', client[0], client[1],
                            scope.get("method", "-"), path, scope.get("http_version", "1.1"),
                            status, seconds * 1000.0)

"""Pure ASGI middleware around the whole app: body size limit (413), per-request metrics and
one access-log line per request.

The size limit never reads an unbounded body: a ``Content-Length`` over the limit is answered
413 before any byte is read, and chunked bodies are counted as they stream in; the request is
cut off (413) as soon as the count passes the limit.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from pochitrain.serve.metrics import Metrics

access_log = logging.getLogger("pochitrain.serve.access")


class BodyTooLarge(Exception):
    pass


@dataclass
class LimitAndLog:
    app: Any
    max_body: int
    metrics: Metrics
    routes: set[str]
    log: bool = True

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = {"status": 500, "started": False, "bytes": 0}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
            await send(message)

        async def receive_wrapper() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                state["bytes"] += len(message.get("body", b""))
                if state["bytes"] > self.max_body:
                    raise BodyTooLarge
            return message

        try:
            if self._declared_length(scope) > self.max_body:
                await self._answer_413(send_wrapper)
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except BodyTooLarge:
            if not state["started"]:
                await self._answer_413(send_wrapper)
        finally:
            self._record(scope, int(state["status"]), time.perf_counter() - start)

    @staticmethod
    def _declared_length(scope: dict[str, Any]) -> int:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return 0
        return 0

    async def _answer_413(self, send: Any) -> None:
        mb = self.max_body / 1e6
        body = json.dumps({
            "detail": f"リクエストが大きすぎます (上限 {mb:g} MB)。\n"
                      f"The request body is larger than the limit of {mb:g} MB "
                      f"({self.max_body} bytes); send fewer or smaller images, or start the "
                      "server with a larger --max-body-mb.",
            "error": "body_too_large"}, ensure_ascii=False).encode()
        # Connection: close, so the unread rest of the body never has to be read.
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

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

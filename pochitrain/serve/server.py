"""One server process: the model, the app over it on uvicorn; SIGTERM / Ctrl+C drain it and
the process exits 0. ``serve.workers.serve`` picks this or several processes.

Shutdown order (uvicorn's graceful shutdown, then ours): the listening socket closes (no new
connections), idle and half-open connections close, in-flight requests run to their answers
for up to ``drain_timeout_s``; those still running then get a JSON 503 ``shutting_down``.
Then the app's lifespan ends: the batcher's thread is given a moment to finish (work left
in it belongs to requests already answered), the decode pool and the model close.

Connections: uvicorn gives a connection no deadline for its request head, and counts
half-open connections against its concurrency limit. :func:`timed_protocol` adds the
deadline (``read_timeout_s``: then 408 ``read_timeout`` and the connection closes); the
limit on requests in flight is the middleware's, which counts requests, not connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pochitrain.serve.app import create_app
from pochitrain.serve.decode import BadInput
from pochitrain.serve.middleware import effective_limits, read_timeout
from pochitrain.serve.model import ServeModel
from pochitrain.serve.schemas import ServeSettings

if TYPE_CHECKING:
    import socket

    import uvicorn
    from fastapi import FastAPI
    from uvicorn.protocols.http.h11_impl import H11Protocol as ProtocolBase

    from pochitrain.inference.torch_runner import TorchOptions
    from pochitrain.serve.batcher import Batcher


MAX_PORT = 65535
if not TYPE_CHECKING:
    ProtocolBase = object  # uvicorn's protocol comes in by timed_protocol's type()


@dataclass
class ServeOptions:
    model: Path
    config: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    providers: list[str] | None = None
    pipeline: str = "auto"
    torch_options: TorchOptions | None = None
    drain_timeout_s: float = 30.0  # 0: requests in flight are cut at once
    warmup: bool = True
    workers: int = 1  # server processes on the port


def _log_to_stderr(pid: bool) -> None:
    """One line per record on stderr; with workers, each line names its process."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s [%(process)d] %(message)s" if pid else "%(asctime)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S"))
    for name in ("pochitrain.serve.access", "pochitrain.serve"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    logging.getLogger("uvicorn.error").addFilter(reword_drain_cut)


def reword_drain_cut(record: logging.LogRecord) -> bool:
    """uvicorn's line for requests cut at the drain timeout, in our words (they are answered
    503 shutting_down)."""
    if str(record.msg).startswith("Cancel %s running task"):
        record.msg = ("ドレインの時間切れ: 処理中の %s 件のリクエストを打ち切りました (503)。\n"
                      "Drain timeout: %s requests still in flight were cut (503 "
                      "shutting_down); see --drain-timeout.")
        record.args = tuple(record.args or (0,)) * 2  # the count, twice
    return True


def open_server(options: ServeOptions, settings: ServeSettings
                ) -> tuple[ServeModel, FastAPI, uvicorn.Config]:
    """(model, app, uvicorn.Config): the model opened (and warmed up) here, the app over it."""
    import uvicorn

    raise_open_files_limit()
    model = ServeModel(options.model, config=options.config, device=options.device,
                       providers=options.providers, max_batch=settings.max_batch,
                       pipeline=options.pipeline, torch_options=options.torch_options)
    try:
        if options.warmup:
            model.warmup((1, settings.max_batch))
        app = create_app(model, settings)
        _log_to_stderr(pid=options.workers > 1)
        # no limit_concurrency: it counts idle connections and answers in plain text
        config = uvicorn.Config(
            app, host=options.host, port=options.port, access_log=False, log_level="warning",
            # typed int, used as a timeout in seconds: a float keeps a drain under 1 s
            timeout_graceful_shutdown=options.drain_timeout_s,  # type: ignore[arg-type]
            backlog=2048,
            http=timed_protocol(settings.read_timeout_s))
    except BaseException:
        model.close()
        raise
    return model, app, config


def raise_open_files_limit() -> None:
    """The soft limit on open files up to the hard one: each connection is a file, and at
    the soft limit (often 1024) no new client could connect."""
    with contextlib.suppress(ImportError, ValueError, OSError):  # no such limit, or not ours
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class HeadDeadline(ProtocolBase):
    """Mixed into uvicorn's HTTP protocol (h11 or httptools: both keep the running request
    in ``cycle``) by :func:`timed_protocol`, which sets the three class attributes."""

    read_timeout_s = 15.0
    timed_out = b""  # the whole 408 answer
    not_http = b""  # the whole 400 answer
    head_timer: asyncio.TimerHandle | None = None
    head_bytes = False  # a byte of the awaited head has come

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.arm()

    def awaiting_head(self) -> bool:
        """No request is running (a pipelined one counts as running)."""
        return self.cycle is None or bool(self.cycle.response_complete)

    def data_received(self, data: bytes) -> None:
        self.head_bytes = True
        super().data_received(data)
        if not self.awaiting_head():  # a complete head: a request runs
            self.disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.awaiting_head():
            self.arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        super().connection_lost(exc)

    def arm(self) -> None:
        self.disarm()
        self.head_bytes = False
        self.head_timer = self.loop.call_later(self.read_timeout_s, self.head_timeout)

    def disarm(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def head_timeout(self) -> None:
        self.head_timer = None
        if not self.transport.is_closing():
            if self.head_bytes:
                self.transport.write(self.timed_out)
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self.transport.write(self.not_http)
        self.transport.close()


def timed_protocol(read_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with a deadline for every request head: from the connection's
    start, and again after each response. A head still incomplete at the deadline gets a
    JSON 408 ``read_timeout`` (nothing if not a byte came) and the connection closes. Once
    a head is complete, the body's pauses are the middleware's to time. Bytes that are not
    HTTP get a JSON 400 ``bad_http`` instead of uvicorn's plain text."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return type("TimedHTTPProtocol", (HeadDeadline, AutoHTTPProtocol), {
        "read_timeout_s": read_timeout_s,
        "timed_out": closing_answer(read_timeout(read_timeout_s)),
        "not_http": closing_answer(BadInput(400, "bad_http", "HTTP リクエストとして読めません。",
                                            "The bytes received are not a valid HTTP/1.1 "
                                            "request (or its head is too large)."))})


def closing_answer(refusal: BadInput) -> bytes:
    """A whole HTTP/1.1 answer with our JSON error body, written before the connection
    closes where no request (hence no ASGI app) is there to answer."""
    body = json.dumps(refusal.body(), ensure_ascii=False).encode()
    return (f"HTTP/1.1 {refusal.status} {HTTPStatus(refusal.status).phrase}\r\ncontent-type: "
            f"application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
            ).encode() + body


def banner(options: ServeOptions, settings: ServeSettings, details: dict[str, Any],
           workers: int = 1) -> None:
    from pochitrain.console import info

    info(f"[bold]pochi serve[/bold]: {options.model.name} ({details['backend']}, "
         f"{details['device']}, {details['num_classes']} classes, input "
         f"{'x'.join(str(v) for v in details['input_size'])}; pipeline "
         f"{details['pipeline']})")
    procs = f"{workers} worker processes" if workers > 1 else "1 worker process"
    batching = (f"max batch {settings.max_batch}, max wait {settings.max_wait_ms:g} ms")
    inflight, requests = effective_limits(settings)
    each = (f"queue {settings.queue} images, {settings.decode_workers} decode threads; body "
            f"limit {settings.max_body_bytes / 1e6:g} MB, {inflight / 1e6:g} MB and "
            f"{requests} requests in flight, read timeout {settings.read_timeout_s:g} s")
    info(f"  {procs}, each: {batching}, {each}")
    base = f"http://{url_host(options.host)}:{options.port}"
    info(f"  {base}/api/v1/predict   docs: {base}/docs   (Ctrl+C / SIGTERM: drain and stop)")
    sys.stdout.flush()


def url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def port_error(host: str, port: int) -> Exception:
    from pochitrain.errors import PochiError, UsageError

    if not 0 < port <= MAX_PORT:
        return UsageError(f"ポート番号 {port} は範囲外です (1〜{MAX_PORT})。\n"
                          f"Port {port} is out of range: ports are 1 to {MAX_PORT}.",
                          "Choose a --port from 1 to 65535.")
    return PochiError(
        f"サーバーを起動できません: {host}:{port}\n"
        f"The server could not start on {host}:{port} (port in use, "
        "or the address is not on this machine).",
        "Choose another --port, or stop the program that uses it.")


def serve_one(options: ServeOptions, settings: ServeSettings) -> int:
    """Open the model, serve in this process until SIGTERM / SIGINT, drain; 0 after a clean
    stop."""
    import uvicorn

    from pochitrain.console import info

    model, app, config = open_server(options, settings)
    try:
        server = uvicorn.Server(config)
        banner(options, settings, model.info())
        stopped_by = run_server(server)
        if not server.started:
            raise port_error(options.host, options.port)
        info(f"停止しました / Server stopped{f' ({stopped_by})' if stopped_by else ''}; "
             f"{app.state.batcher.batches} model batches run.")
        leave_if_model_busy(app.state.batcher)
        return 0
    finally:
        model.close()


def leave_if_model_busy(batcher: Batcher) -> None:
    """End the process now if a model call cut by the drain timeout still runs: the
    interpreter's normal exit would wait for it or, with PyTorch, abort while a thread is
    inside it. Output is flushed first; nothing else is left to clean up."""
    if batcher.running:
        from pochitrain.console import info

        info("モデルの実行中に停止しました / A model call was still running; not waited for.")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@contextmanager
def signals_recorded() -> Iterator[list[str]]:
    """SIGTERM / SIGINT only noted (names, in order) inside the block: uvicorn re-raises the
    signal it caught after its graceful shutdown, and a default SIGTERM handler would then
    kill the process (exit 143) right after a clean drain."""
    caught: list[str] = []
    handlers = {s: signal.signal(s, lambda sig, _: caught.append(signal.Signals(sig).name))
                for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield caught
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


def run_server(server: uvicorn.Server, sockets: list[socket.socket] | None = None) -> str:
    """``server.run()`` under :func:`signals_recorded`; the names of the signals caught."""
    from pochitrain.gpu_input import quick_gil_handoff

    # uvicorn exits 1 when it cannot bind; the caller explains why. The quick handoff: the
    # event loop is always busy under load, and the model and decode threads, back from a
    # GIL-free call, would each time wait a whole 5 ms switch interval behind it.
    with signals_recorded() as caught, quick_gil_handoff(), contextlib.suppress(SystemExit):
        server.run(sockets)
    return ", ".join(caught)

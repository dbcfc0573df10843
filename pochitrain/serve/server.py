"""One server process: the model, the app over it on uvicorn; SIGTERM / Ctrl+C drain it and
the process exits 0. ``serve.workers.serve`` picks this or several processes.

Shutdown order (uvicorn's graceful shutdown, then ours): the listening socket closes (no new
connections), idle keep-alive connections close, in-flight requests run to their answers
(up to ``drain_timeout_s``), then the app's lifespan ends: the batcher finishes every queued
image and its thread exits, the decode pool joins, the model closes.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pochitrain.serve.app import ServeSettings, create_app
from pochitrain.serve.model import ServeModel

if TYPE_CHECKING:
    import socket

    import uvicorn
    from fastapi import FastAPI

    from pochitrain.inference.torch_runner import TorchOptions


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
    drain_timeout_s: float = 30.0
    warmup: bool = True
    workers: int = 1  # server processes on the port


def _log_to_stderr(pid: bool = False) -> None:
    """One line per record on stderr; with workers, each line names its process."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s [%(process)d] %(message)s" if pid else "%(asctime)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S"))
    for name in ("pochitrain.serve.access", "pochitrain.serve"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def open_server(options: ServeOptions, settings: ServeSettings
                ) -> tuple[ServeModel, FastAPI, uvicorn.Config]:
    """(model, app, uvicorn.Config): the model opened (and warmed up) here, the app over it."""
    import uvicorn

    model = ServeModel(options.model, config=options.config, device=options.device,
                       providers=options.providers, max_batch=settings.max_batch,
                       pipeline=options.pipeline, torch_options=options.torch_options)
    try:
        if options.warmup:
            model.warmup((1, settings.max_batch))
        app = create_app(model, settings)
        _log_to_stderr(pid=options.workers > 1)
        config = uvicorn.Config(
            app, host=options.host, port=options.port, access_log=False, log_level="warning",
            timeout_graceful_shutdown=int(options.drain_timeout_s) or None,
            limit_concurrency=max(1024, 2 * settings.queue), backlog=2048)
    except BaseException:
        model.close()
        raise
    return model, app, config


def banner(options: ServeOptions, settings: ServeSettings, details: dict[str, Any],
           workers: int = 1) -> None:
    from pochitrain.console import info

    info(f"[bold]pochi serve[/bold]: {options.model.name} ({details['backend']}, "
         f"{details['device']}, {details['num_classes']} classes, input "
         f"{'x'.join(str(v) for v in details['input_size'])}; pipeline "
         f"{details['pipeline']})")
    procs = f"{workers} worker processes" if workers > 1 else "1 worker process"
    batching = (f"max batch {settings.max_batch}, max wait {settings.max_wait_ms:g} ms")
    each = (f"queue {settings.queue} images, {settings.decode_workers} decode threads; body "
            f"limit {settings.max_body_bytes / 1e6:g} MB")
    info(f"  {procs}, each: {batching}, {each}")
    info(f"  http://{options.host}:{options.port}/api/v1/predict   docs: "
         f"http://{options.host}:{options.port}/docs   (Ctrl+C / SIGTERM: drain and stop)")
    sys.stdout.flush()


def port_error(host: str, port: int) -> Exception:
    from pochitrain.errors import PochiError

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
        return 0
    finally:
        model.close()


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
    # uvicorn exits 1 when it cannot bind; the caller explains why
    with signals_recorded() as caught, contextlib.suppress(SystemExit):
        server.run(sockets)
    return ", ".join(caught)

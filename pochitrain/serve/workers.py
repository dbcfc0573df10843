"""``pochi serve``'s entry (:func:`serve`): one server process, or ``--workers N``: N server
processes on one port, each with its own model, batcher, decode threads and event loop (one
process tops out at what its GIL allows).

The parent binds N SO_REUSEPORT sockets (the kernel spreads connections over them) and
spawns one worker per socket, which serves as the single-process server does and reports
"ready" on a pipe. The parent prints the banner once all are ready, turns SIGTERM / SIGINT
into SIGTERM for every worker (each drains) and exits 0 when all stopped cleanly; a worker's
start-up error is raised again in the parent. /metrics on any worker reports the totals of
all of them (prometheus_client's multiprocess mode, in a private temp folder named after the
parent's pid, so folders left by a killed server go at the next start). A
``PROMETHEUS_MULTIPROC_DIR`` from the environment is never used: a missing folder would stop
the start, a shared one would mix other programs' values into ours.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pochitrain.serve.app import ServeSettings
from pochitrain.serve.metrics import MULTIPROC_ENV
from pochitrain.serve.server import (
    MAX_PORT,
    ServeOptions,
    banner,
    leave_if_model_busy,
    open_server,
    port_error,
    run_server,
    serve_one,
    signals_recorded,
)

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

METRICS_PREFIX = "pochi_serve_metrics_"  # + the parent's pid + "_"
STOP_GRACE_S = 15.0  # beyond --drain-timeout: closing the model, leaving the process


def bind_sockets(host: str, port: int, n: int) -> list[socket.socket]:
    """``n`` listening sockets in one SO_REUSEPORT group on host:port. A plain bind first,
    so a port held by anything else (another --workers server included) is an error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        for _ in range(n):
            sock = socket.socket(family)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(2048)
    except (OSError, OverflowError):
        for sock in sockets:
            sock.close()
        raise port_error(host, port) from None
    return sockets


# ---- worker process -------------------------------------------------------------------
def _watch_parent(parent: int) -> None:
    """SIGTERM ourselves (a clean drain) if the parent dies: no orphan keeps the port."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="pochi-parent-watch", daemon=True).start()


class WorkerError(NamedTuple):
    """Why a worker could not serve: the error's type, message and remedy."""

    kind: type
    message: str
    remedy: str | None


class Report(NamedTuple):
    """A worker's message to the parent: the ``_Worker`` field it sets, and its value:
    "ready" (/model-info facts), "batches" (model batches run: it stopped cleanly) or
    "error" (a WorkerError)."""

    field: str
    value: Any


def worker_main(index: int, options: ServeOptions, settings: ServeSettings,
                sock: socket.socket, conn: Connection, parent: int) -> None:
    """One worker: open the model, serve ``sock``, send its messages on ``conn``."""
    import uvicorn

    from pochitrain.errors import PochiError

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl+C into SIGTERM
    _watch_parent(parent)
    try:
        model, app, config = open_server(options, settings)
    except PochiError as exc:
        conn.send(Report("error", WorkerError(type(exc), exc.message, exc.remedy)))
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - a bug: its traceback here, its name there
        traceback.print_exc()
        conn.send(Report("error", WorkerError(PochiError, f"{type(exc).__name__}: {exc}", None)))
        sys.exit(1)

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                conn.send(Report("ready", model.info()))

    if "torch" in sys.modules:  # N processes x all cores of intra-op threads would thrash
        sys.modules["torch"].set_num_threads(max(1, (os.cpu_count() or 1) // options.workers))
    # From here a late SIGTERM (the parent's, after Ctrl+C already stopped us) is ignored.
    signal.signal(signal.SIGTERM, lambda sig, frame: None)
    try:
        server = Server(config)
        run_server(server, [sock])
        if server.started:
            conn.send(Report("batches", app.state.batcher.batches))
            leave_if_model_busy(app.state.batcher)
        else:
            message = (f"ワーカー {index} がサーバーを起動できませんでした。\n"
                       f"Worker {index} could not start serving (see the messages above).")
            conn.send(Report("error", WorkerError(PochiError, message, None)))
    finally:
        model.close()
    sys.exit(0 if server.started else 1)


# ---- parent ---------------------------------------------------------------------------
@dataclass
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection
    ready: dict[str, Any] | None = None
    error: WorkerError | None = None
    batches: int | None = None
    open: bool = True

    @property
    def alive(self) -> bool:
        return self.process.exitcode is None

    @property
    def failed(self) -> bool:
        return self.error is not None or (not self.alive and self.ready is None)

    def read(self) -> None:
        try:
            report = self.conn.recv()
        except (EOFError, OSError):
            self.open = False
            return
        setattr(self, report.field, report.value)


def _poll(workers: list[_Worker], timeout: float) -> None:
    from multiprocessing.connection import wait

    waitables: list[Any] = [w.conn for w in workers if w.open]
    waitables += [w.process.sentinel for w in workers if w.alive]
    for ready in wait(waitables, timeout):
        for w in workers:
            if ready is w.conn:
                w.read()


def _stop(workers: list[_Worker], timeout: float) -> None:
    """SIGTERM every live worker, read their last words, SIGKILL what outlives ``timeout``."""
    for w in workers:
        if w.alive:
            w.process.terminate()  # SIGTERM
    end = time.monotonic() + timeout
    while any(w.alive or w.open for w in workers) and time.monotonic() < end:
        _poll(workers, 0.2)
    _kill(workers)


def _kill(workers: list[_Worker]) -> None:
    for w in workers:
        if w.alive:
            w.process.kill()
        w.process.join(5)


def _startup_error(workers: list[_Worker]) -> Exception:
    from pochitrain.errors import PochiError

    for w in workers:
        while w.open and not w.alive:  # its last words are still in the pipe
            w.read()
    for w in workers:
        if w.error is not None:
            kind, message, remedy = w.error
            try:
                return kind(message, remedy)  # type: ignore[no-any-return]
            except TypeError:
                return PochiError(message, remedy)
    w = next(w for w in workers if w.failed)
    return PochiError(
        f"ワーカー {w.index} が起動前に終了しました (終了コード {w.process.exitcode})。\n"
        f"Worker {w.index} exited with code {w.process.exitcode} before it was ready.",
        "See the messages above (out of memory?); try fewer --workers.")


def remove_stale_metrics_folders(root: Path | None = None) -> list[Path]:
    """Remove the metrics folders (in ``root``, default: the temp folder) of servers whose
    parent process is gone (killed before it could clean up); the folders removed."""
    from pochitrain.scratch import remove_orphans

    return remove_orphans(rf"{METRICS_PREFIX}(\d+)_.+", root)


@contextmanager
def _metrics_folder() -> Iterator[None]:
    """A private folder for prometheus_client's multiprocess files, removed at the end."""
    previous = os.environ.get(MULTIPROC_ENV)
    remove_stale_metrics_folders()
    with tempfile.TemporaryDirectory(prefix=f"{METRICS_PREFIX}{os.getpid()}_",
                                     ignore_cleanup_errors=True) as folder:
        os.environ[MULTIPROC_ENV] = folder  # the spawned workers inherit it
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(MULTIPROC_ENV, None)
            else:
                os.environ[MULTIPROC_ENV] = previous


def _start(options: ServeOptions, settings: ServeSettings, sockets: list[socket.socket],
           workers: list[_Worker]) -> None:
    """One spawned worker per socket, appended to ``workers`` as it starts."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    for i, sock in enumerate(sockets):
        ours, theirs = ctx.Pipe(duplex=False)
        process = ctx.Process(target=worker_main, name=f"pochi-serve-worker-{i}",
                              args=(i, options, settings, sock, theirs, os.getpid()))
        process.start()
        theirs.close()
        sock.close()  # the worker holds it now; closed there, it stops listening
        workers.append(_Worker(i, process, ours))


def _await_ready(workers: list[_Worker], caught: list[str]) -> None:
    """Until every worker is ready (or a signal came); a worker's start-up error is raised."""
    while not caught and not all(w.ready for w in workers) \
            and not any(w.failed for w in workers):
        _poll(workers, 0.5)
    if not caught and any(w.ready is None for w in workers):
        error = _startup_error(workers)
        _stop(workers, STOP_GRACE_S)
        raise error


def _run_until_signal(options: ServeOptions, settings: ServeSettings,
                      workers: list[_Worker], caught: list[str]) -> None:
    """Serve until a signal or a worker's death, stop them all, raise what went wrong."""
    from pochitrain.errors import PochiError

    if all(w.ready is not None for w in workers):
        banner(options, settings, workers[0].ready or {}, len(workers))
        while not caught and all(w.alive for w in workers):
            _poll(workers, 0.5)
    died = [w for w in workers if not w.alive]
    _stop(workers, options.drain_timeout_s + STOP_GRACE_S)
    if died and not caught:
        w = died[0]
        raise PochiError(
            f"ワーカー {w.index} が終了したため、サーバーを停止しました "
            f"(終了コード {w.process.exitcode})。\n"
            f"Worker {w.index} exited with code {w.process.exitcode}; the server stopped.",
            "See the messages above (out of memory?), then start it again.")
    if "SIGINT" in caught and any(w.ready is None for w in workers):
        raise KeyboardInterrupt
    bad = [w for w in workers if w.ready is not None and w.batches is None]
    if bad:
        raise PochiError(
            f"ワーカー {bad[0].index} が正常に停止しませんでした "
            f"(終了コード {bad[0].process.exitcode})。\n"
            f"Worker {bad[0].index} did not stop cleanly (exit code "
            f"{bad[0].process.exitcode}).",
            "Give in-flight requests more time with --drain-timeout.")


def auto_workers(model: Path, device: str, providers: list[str] | None) -> int:
    """``--workers auto``: one process where the model runs on the CPU (its own threads use
    every core); on a GPU one per four CPU cores, at most four. One process's event loop,
    batcher and decode threads share one GIL, which holds it far below what the GPU does
    (docs/benchmarks.md, Serving); each worker holds its own copy of the model."""
    from pochitrain.model import backend_for

    if not backend_for(model).on_gpu(device, providers):
        return 1
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def serve_workers(options: ServeOptions, settings: ServeSettings) -> int:
    """Serve with ``options.workers`` processes; 0 after a clean stop of all of them."""
    from pochitrain.console import info

    sockets = bind_sockets(options.host, options.port, options.workers)
    workers: list[_Worker] = []
    try:
        with _metrics_folder(), signals_recorded() as caught:
            try:
                _start(options, settings, sockets, workers)
                _await_ready(workers, caught)
                _run_until_signal(options, settings, workers, caught)
            finally:
                _kill(workers)
    finally:
        for sock in sockets:
            sock.close()
    batches = sum(w.batches or 0 for w in workers)
    info(f"停止しました / Server stopped ({', '.join(dict.fromkeys(caught))}); "
         f"{len(workers)} workers, {batches} model batches run.")
    return 0


def serve(options: ServeOptions, settings: ServeSettings) -> int:
    """``pochi serve``: one server process, or ``--workers N``; 0 after a clean stop."""
    if not 0 < options.port <= MAX_PORT:
        raise port_error(options.host, options.port)
    if options.workers > 1:
        return serve_workers(options, settings)
    for name in (MULTIPROC_ENV, MULTIPROC_ENV.lower()):  # prometheus_client reads both
        os.environ.pop(name, None)  # before it is imported: see above
    return serve_one(options, settings)

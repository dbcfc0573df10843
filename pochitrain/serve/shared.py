"""``pochi serve --workers N --shared-model``: N HTTP processes in front of ONE model.

Each worker process parses HTTP and multipart, checks and (where needed) decodes images,
exactly as without the option; its batcher then sends each batch of prepared images to the
main process over a Unix socket instead of running a model of its own. The main process
opens the model once and gathers the images of every worker into its own batches.

Why: with a model per worker, N processes on one GPU are N CUDA contexts that the GPU
time-slices, each with small batches (a mean of 7 at 64 clients over 8 workers). One model
keeps one context and sees every worker's images, so its batches fill up.

Messages are length-prefixed pickles (the socket lives in a private temp folder of the
server): a worker sends a list of prepared items and gets one result per item back, a
probability row or a ``BadInput``; any other failure comes back as a ``RuntimeError`` with
its message (the worker answers 500, as one process does).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from pochitrain.serve.app import ServeSettings
from pochitrain.serve.batcher import Batcher
from pochitrain.serve.decode import BadInput, Payload

FRAME = struct.Struct("!Q")  # payload length


def pack(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(data)) + data


def portable(result: Any) -> Any:
    """A result the worker can unpickle: rows and BadInput as they are, other errors as a
    RuntimeError with their message (their classes may need arguments pickle cannot give)."""
    if isinstance(result, BaseException) and not isinstance(result, BadInput):
        return RuntimeError(getattr(result, "message", None) or str(result))
    return result


def model_facts(model: Any) -> dict[str, Any]:
    """What a worker needs to answer without the model: /model-info, /version, prepare()."""
    facts = {"runtime": model.runtime, "class_names": model.class_names, "info": model.info(),
             "versions": model.backend_versions(), "preprocess": model.preprocess.to_dict(),
             "gpu": model.gpu is not None}
    # plain JSON values: torch's version string is a class of torch, and unpickling it would
    # import torch into every worker
    return dict(json.loads(json.dumps(facts, default=str)))


# ---- main process ---------------------------------------------------------------------
def socket_error(path: Path) -> Any:
    """A PochiError when a Unix socket cannot be made at ``path`` (e.g. a TMPDIR too long for
    a socket name, about 107 bytes), else None; checked before the model is loaded."""
    from pochitrain.errors import PochiError

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.bind(str(path))
    except OSError as exc:
        return PochiError(f"The shared model cannot listen on {path}: {exc}.",
                          "Set TMPDIR to a short local folder, or run without "
                          "--shared-model.")
    finally:
        probe.close()
        path.unlink(missing_ok=True)
    return None


class ModelHost:
    """The model behind a Unix socket: one batcher over the images of every connection."""

    def __init__(self, model: Any, settings: ServeSettings, path: Path) -> None:
        from pochitrain.serve.metrics import Metrics

        self.model = model
        self.path = path
        metrics = Metrics(lambda: 0.0)  # writes to the workers' multiprocess folder
        # The workers bound the images in flight (--queue each); this queue never refuses.
        self.batcher = Batcher(model.run_batch, max_batch=settings.max_batch,
                               max_wait_s=settings.max_wait_ms / 1000.0,
                               queue_limit=1 << 62, on_batch=metrics.observe_batch)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: list[BaseException] = []
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="pochi-serve-host",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()
        ready = self._ready.wait(30)
        if self._error:
            raise self._error[0]
        if not ready:  # the workers would only fail to connect: say why here
            from pochitrain.errors import PochiError

            raise PochiError(f"The shared model did not start listening on {self.path} "
                             "within 30 s.", "Run without --shared-model (one model per "
                             "worker), or check that the folder allows Unix sockets.")

    def close(self) -> None:
        """Stop listening, finish what was sent, close the model (once)."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(90)
        self.model.close()

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error.append(exc)
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.batcher.start()
        try:
            try:
                server = await asyncio.start_unix_server(self._client, path=str(self.path))
            except OSError as exc:  # checked before the model was loaded; in case it changed
                raise (socket_error(self.path) or exc) from exc
            self._ready.set()
            await self._stop.wait()
            server.close()
            await server.wait_closed()
        finally:
            await self._loop.run_in_executor(None, self.batcher.stop, 60.0)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = FRAME.unpack(await reader.readexactly(FRAME.size))
                items = pickle.loads(await reader.readexactly(size))
                rows = await self.batcher.submit(items)
                writer.write(pack([portable(r) for r in rows]))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker closed its end
        finally:
            writer.close()


# ---- worker process -------------------------------------------------------------------
class RemoteModel:
    """Stands for ``ServeModel`` in a worker: prepares images here, runs them there."""

    remote = True

    def __init__(self, path: str, facts: dict[str, Any]) -> None:
        from pochitrain.preprocess import Preprocess

        self.runtime: str = facts["runtime"]
        self.class_names: list[str] = facts["class_names"]
        self.preprocess = Preprocess.from_dict(facts["preprocess"])
        self._facts = facts
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)

    def info(self) -> dict[str, Any]:
        return dict(self._facts["info"])

    def backend_versions(self) -> dict[str, str]:
        return dict(self._facts["versions"])

    def prepare(self, payload: Payload) -> Any:
        from pochitrain.serve.model import prepare

        return prepare(payload, self.preprocess, gpu=self._facts["gpu"])

    def run_batch(self, items: list[Any]) -> list[Any]:
        with self._lock:  # one batch at a time per worker (its batcher has one thread)
            try:
                self._sock.sendall(pack(items))
                (size,) = FRAME.unpack(self._recv(FRAME.size))
                return list(pickle.loads(self._recv(size)))
            except OSError as exc:
                raise RuntimeError(f"the model process is gone ({exc})") from None

    def _recv(self, n: int) -> bytearray:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self._sock.recv_into(view[got:])
            if k == 0:
                raise ConnectionError("closed")
            got += k
        return buf

    def close(self) -> None:
        self._sock.close()

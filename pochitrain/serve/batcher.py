"""Micro-batching: concurrent requests -> model batches on ONE worker thread.

Requests first reserve queue slots (``admit``: one per image; refused when ``queue_limit``
would be exceeded, the caller answers 503), then ``submit`` their prepared images. The worker
takes the oldest image, waits at most ``max_wait_s`` for more, up to ``max_batch`` images
(from any number of requests), calls ``run_batch`` once and hands each request its rows back
on the event loop. Nothing model-related ever runs on the event loop.

``stop()`` drains: images queued before it are still run, then the worker exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

# Hidden test hook: a file path. While that file exists the model thread starts no batch,
# unless the file holds a number and at least that many images are waiting. Tests hold
# requests in flight with it (no sleeps) and let them go by deleting the file.
GATE_ENV = "POCHI_SERVE_TEST_GATE"
_STOP = object()


class Stopping(RuntimeError):
    """The server is stopping: the batcher (or the decode pool) takes no more work."""

# run_batch(items) -> one result per item, or an Exception instance for an item that failed
RunBatch = Callable[[list[Any]], Sequence[Any]]


@dataclass
class _Job:
    """One request: its images' results, filled in by the worker thread alone."""

    future: asyncio.Future[list[Any]]
    results: list[Any]
    remaining: int


class Queued(NamedTuple):
    """One image waiting for a batch: the request's job and the image's place in it."""

    job: _Job
    position: int
    item: Any


class Batcher:
    def __init__(self, run_batch: RunBatch, *, max_batch: int, max_wait_s: float,
                 queue_limit: int, on_batch: Callable[[int, float], None]) -> None:
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_s)
        self.queue_limit = queue_limit
        self.on_batch = on_batch  # (batch size, seconds) after each model call
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.depth = 0  # admitted images not yet answered
        self._thread: threading.Thread | None = None
        self._gate = os.environ.get(GATE_ENV, "")
        self.batches = 0
        self.stopped = False  # stop() was called: submit refuses

    def admit(self, n: int) -> bool:
        """Reserve ``n`` queue slots; False (nothing reserved) when the queue is full."""
        with self._lock:
            if self.depth + n > self.queue_limit:
                return False
            self.depth += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.depth -= n

    async def submit(self, items: list[Any]) -> list[Any]:
        """Run ``items`` (already admitted, at least one) in the next batches; their results,
        in order."""
        job = _Job(asyncio.get_running_loop().create_future(), [None] * len(items), len(items))
        with self._lock:  # before the stop mark, or refused: never after it, unanswered
            if self.stopped:
                raise Stopping("server stopping")
            for i, item in enumerate(items):
                self._queue.put(Queued(job, i, item))
        return await job.future

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="pochi-serve-model",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish every image queued so far, then end the worker thread (waiting at most
        ``timeout`` seconds: then :attr:`running` stays true)."""
        with self._lock:
            self.stopped = True
            self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """The worker thread is alive: started, or a model call outlived ``stop``."""
        return self._thread is not None and self._thread.is_alive()

    # ---- worker thread ------------------------------------------------------------------
    def _gather(self, first: Queued) -> list[Queued]:
        """Up to ``max_batch`` entries: ``first`` plus whatever arrives within max_wait."""
        entries = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(entries) < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                entry = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is _STOP:  # the last entry (submit refuses after it): seen again by _work
                self._queue.put(_STOP)
                break
            entries.append(entry)
        return entries

    def _work(self) -> None:
        while (first := self._queue.get()) is not _STOP:
            if self._gate:
                self._wait_at_gate()
            entries = self._gather(first)
            start = time.perf_counter()
            try:
                results: Sequence[Any] = self.run_batch([e.item for e in entries])
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets it
                results = [exc] * len(entries)
            self.batches += 1
            self.on_batch(len(entries), time.perf_counter() - start)
            for entry, result in zip(entries, results):
                self._deliver(entry.job, entry.position, result)

    def _wait_at_gate(self) -> None:
        """The test hook (``GATE_ENV``); ``first`` is taken, so it counts as one waiting."""
        while True:
            try:
                text = Path(self._gate).read_text().strip()
            except OSError:  # no file: the gate is open
                return
            if text.isdigit() and self._queue.qsize() + 1 >= int(text):
                return
            time.sleep(0.005)

    def _deliver(self, job: _Job, index: int, result: Any) -> None:
        job.results[index] = result
        job.remaining -= 1
        if job.remaining == 0:
            with contextlib.suppress(RuntimeError):  # the event loop is gone (forced exit)
                job.future.get_loop().call_soon_threadsafe(_resolve, job.future, job.results)


def _resolve(future: asyncio.Future[list[Any]], results: list[Any]) -> None:
    if not future.done():  # a cancelled request (client gone) needs no answer
        future.set_result(results)

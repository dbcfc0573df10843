"""Files read and checked by a helper process, handed over in shared memory (GPU pipeline).

Reading files and checking JPEG headers in the command's process holds the GIL against the
decode and resize threads; a process of its own does it on another core. Over a socket pair
the command sends ``(slot, [path, ...])``; the helper reads the files into that slot of a
shared ``memfd`` buffer and answers ``(slot, [(kind, offset, size), ...])``: ``"jpeg"`` for a
JPEG nvJPEG decodes as PIL would, ``"other"`` for what the command reads itself
(``read.read_item``). A slot is handed back once its files are decoded (``SlotChunks``).
Linux only. This module imports nothing heavy: it is the helper's program.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from pochitrain.gpu_input.read import Entry, Read
from pochitrain.gpu_input.vet import header_verdict, is_complete_jpeg

if TYPE_CHECKING:
    import torch

GROUP = 32  # files per request
SLOTS = 24  # requests in flight (a slot each)
SLOT_BYTES = 2 << 20  # 2 MiB: 32 files of 64 KB; a bigger file is read by the command

T = TypeVar("T")


class Answer(NamedTuple):
    """The helper's word on one file; for ``"jpeg"``, where its bytes are in the buffer."""

    kind: str
    offset: int
    size: int


OTHER = Answer("other", 0, 0)


def serve(conn: Connection, buf: memoryview, limit: int | None) -> None:
    """The helper's loop: answer requests until the command closes its end."""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        slot, paths = msg
        at, end = slot * SLOT_BYTES, (slot + 1) * SLOT_BYTES
        answers = []
        for path in paths:
            kind, off, size = "other", 0, 0
            with contextlib.suppress(OSError), open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                if 0 < size <= end - at and f.readinto(buf[at:at + size]) == size:
                    data = buf[at:at + size]
                    if is_complete_jpeg(data) and header_verdict(data, limit) is True:
                        kind, off = "jpeg", at
                        at += size
            answers.append((kind, off, size))
        conn.send((slot, answers))


class ReaderProcess:
    """The command's side: :meth:`start` (None when it cannot), ``request`` / ``receive`` in
    order, ``close``."""

    def __init__(self, proc: subprocess.Popen[bytes], conn: Connection, buf: mmap.mmap,
                 view: torch.Tensor) -> None:
        self._proc, self._conn, self._buf = proc, conn, buf
        self.slots = len(buf) // SLOT_BYTES
        self.view: torch.Tensor | None = view  # 1-D uint8 CPU tensor over the buffer

    @classmethod
    def start(cls, limit: int | None) -> ReaderProcess | None:
        import socket

        import torch

        if not hasattr(os, "memfd_create"):
            return None
        fd = ours = theirs = -1
        try:
            fd = os.memfd_create("pochi-read")
            os.ftruncate(fd, SLOTS * SLOT_BYTES)
            buf = mmap.mmap(fd, SLOTS * SLOT_BYTES)
            ours_sock, theirs_sock = socket.socketpair()
            ours, theirs = ours_sock.detach(), theirs_sock.detach()
            proc = subprocess.Popen(
                [sys.executable, "-m", "pochitrain.gpu_input.read_proc", str(theirs), str(fd),
                 str(SLOTS), "" if limit is None else str(limit)],
                pass_fds=(theirs, fd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        except OSError:
            for f in (ours, theirs, fd):
                if f >= 0:
                    os.close(f)
            return None
        os.close(theirs)
        os.close(fd)  # the mapping keeps the memory
        return cls(proc, Connection(ours), buf, torch.frombuffer(buf, dtype=torch.uint8))

    def request(self, slot: int, paths: list[Path]) -> None:
        self._conn.send((slot, [os.fspath(p) for p in paths]))

    def receive(self) -> tuple[int, list[Answer]]:
        slot, answers = self._conn.recv()
        return int(slot), [Answer(*a) for a in answers]

    def stop(self) -> None:
        """Kill the helper and wait for it (what a crash does; used by the tests)."""
        self._proc.kill()
        self._proc.wait()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._conn.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self.view = None
        with contextlib.suppress(BufferError):  # a tensor view still alive: the GC unmaps it
            self._buf.close()


@dataclass
class Held:
    """A group handed out: its slot (-1: read in the command) and files not yet decoded."""

    slot: int
    pending: int


class SlotChunks:
    """Chunks of ``batch_size`` ``read.Entry`` items, in order, read by a ReaderProcess;
    :meth:`consumed` after decoding a chunk hands its slots back. ``fallback(paths)`` reads
    in the command: the "other" answers, and everything once the helper failed."""

    def __init__(self, reader: ReaderProcess, samples: list[tuple[Path, int]], batch_size: int,
                 fallback: Callable[[list[Path]], Iterable[Read]]) -> None:
        self.reader, self.samples, self.batch_size = reader, samples, batch_size
        self.fallback = fallback
        self.free: deque[int] = deque(range(reader.slots))
        self.held: deque[Held] = deque()  # groups handed out, in order
        self.failed: str | None = None

    def consumed(self, n: int) -> None:
        while n and self.held:
            held = self.held[0]
            take = min(n, held.pending)
            held.pending -= take
            n -= take
            if held.pending == 0:
                self.held.popleft()
                if held.slot >= 0:
                    self.free.append(held.slot)

    def _groups(self) -> Iterator[list[Entry]]:
        starts = deque(range(0, len(self.samples), GROUP))
        inflight: deque[tuple[int, list[tuple[Path, int]]]] = deque()
        while starts or inflight:
            while self.failed is None and self.free and starts:
                part = self.samples[starts[0]:starts[0] + GROUP]
                try:
                    self.reader.request(self.free[0], [p for p, _ in part])
                except OSError as exc:
                    self.failed = f"{type(exc).__name__}: {exc}"
                    break
                starts.popleft()
                inflight.append((self.free.popleft(), part))
            if inflight:
                slot, part = inflight.popleft()
                answers = None
                if self.failed is None:
                    try:
                        got, answers = self.reader.receive()
                        assert got == slot, (got, slot)
                    except (EOFError, OSError) as exc:
                        self.failed = f"{type(exc).__name__}: {exc}"
                if answers is None:  # the helper is gone: this group is read here
                    self.free.append(slot)
                    slot, answers = -1, [OTHER] * len(part)
            else:  # every slot waits for a decode (batch_size > SLOTS * GROUP), or failed
                part = self.samples[starts[0]:starts.popleft() + GROUP]
                slot, answers = -1, [OTHER] * len(part)
            self.held.append(Held(slot, len(part)))
            yield self._entries(part, answers)

    def _entries(self, part: list[tuple[Path, int]], answers: list[Answer]) -> list[Entry]:
        view = self.reader.view
        assert view is not None
        others = [p for (p, _), a in zip(part, answers) if a.kind != "jpeg"]
        read = iter(self.fallback(others) if others else [])
        return [Entry(path, label, "jpeg", view[a.offset:a.offset + a.size])
                if a.kind == "jpeg" else Entry(path, label, *next(read))
                for (path, label), a in zip(part, answers)]

    def __iter__(self) -> Iterator[list[Entry]]:
        return rebatch(self._groups(), self.batch_size)


def rebatch(groups: Iterable[list[T]], size: int) -> Iterator[list[T]]:
    """The items of ``groups`` in lists of ``size`` (the last may be shorter); a group is
    asked for only when the items in hand do not fill a list."""
    chunk: list[T] = []
    for group in groups:
        chunk += group
        while len(chunk) >= size:
            yield chunk[:size]
            chunk = chunk[size:]
    if chunk:
        yield chunk


def main(argv: list[str]) -> int:
    conn_fd, buf_fd, slots, limit = int(argv[0]), int(argv[1]), int(argv[2]), argv[3]
    buf = mmap.mmap(buf_fd, slots * SLOT_BYTES)  # unmapped at exit
    serve(Connection(conn_fd), memoryview(buf), int(limit) if limit else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

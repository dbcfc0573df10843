"""Reading image files for the GPU input, and the verdict on each: nvJPEG, PIL
(``data.open_rgb``, as the CPU path decodes) or bad, so skips follow the CPU path."""

from __future__ import annotations

import contextlib
import functools
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from pochitrain.gpu_input.options import Options
from pochitrain.gpu_input.vet import for_nvjpeg

if TYPE_CHECKING:
    import torch

READ_GROUP = 32  # files per read task
T = TypeVar("T")
R = TypeVar("R")


class Read(NamedTuple):
    """One file read: kind ``"jpeg"`` (payload: the encoded bytes, a uint8 tensor or bytes),
    ``"rgb"`` (payload: HWC uint8 array) or ``"bad"`` (payload: None)."""

    kind: str
    payload: Any


class Entry(NamedTuple):
    """One input of a chunk: ``source`` is what PIL opens when nvJPEG cannot (a path, or a
    file-like object for bytes received over the network), ``label`` its class index."""

    source: Any
    label: int
    kind: str
    payload: Any


def read_file_python(path: Path) -> bytearray:
    """The file's bytes in a writable buffer (``torch.frombuffer`` shares it, no copy)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(size)
        got = f.readinto(buf)
        if got != size:  # the file changed while read: take what is there
            del buf[got:]
            buf += f.read()
    return buf


@functools.lru_cache(maxsize=1)
def _native_read() -> Any:
    """torchvision's C++ ``read_file`` op, or None where torchvision has no image ops."""
    try:
        import torch

        from pochitrain.fastimport import import_torchvision

        import_torchvision()
        return torch.ops.image.read_file
    except Exception:  # noqa: BLE001 - no compiled image ops: Python reads the files
        return None


def read_file(path: Path, native: bool | None = None) -> torch.Tensor:
    """The file's bytes as a 1-D uint8 CPU tensor (what nvJPEG takes, no copy). torchvision's
    C++ reader holds the GIL once per file, Python's reads retake it per system call; Python
    reads the rest (unreadable files raise OSError there) and all with ``native`` False
    (``POCHI_READER=python``; None: from the environment)."""
    import torch

    if native is None:
        native = Options.from_env().native_reads
    reader = _native_read() if native else None
    if reader is not None:
        with contextlib.suppress(Exception):  # Python's read gives the verdict below
            return reader(os.fspath(path))
    buf = read_file_python(path)
    return torch.frombuffer(buf, dtype=torch.uint8) if buf else torch.empty(0, dtype=torch.uint8)


def read_item(path: Path, native: bool | None = None) -> Read:
    """The file as nvJPEG's input, PIL's decoded pixels, or bad (see the module doc)."""
    import numpy as np

    from pochitrain.data import open_rgb

    try:
        data = read_file(path, native)
    except OSError:
        return Read("bad", None)
    if for_nvjpeg(data.numpy().data):
        return Read("jpeg", data)
    image = open_rgb(path)
    return Read("bad", None) if image is None else Read("rgb", np.asarray(image))


def reader_for(native: bool) -> Callable[[Path], Read]:
    """:func:`read_item` with the reader chosen once for a pass."""
    return functools.partial(read_item, native=native)


def map_grouped(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: list[T]) -> Iterator[R]:
    """``fn`` over ``items`` in order, ``READ_GROUP`` items per pool task (a hand-off per file
    costs more than reading a cached file). Every task is submitted now, before the first
    result is asked for, so a caller can start the reads of its next batch early."""
    futures = [pool.submit(_each, fn, items[i:i + READ_GROUP])
               for i in range(0, len(items), READ_GROUP)]
    return (x for fut in futures for x in fut.result())


def _each(fn: Callable[[T], R], part: list[T]) -> list[R]:
    return [fn(x) for x in part]


def read_groups(pool: ThreadPoolExecutor, read: Callable[[Path], Read],
                samples: list[tuple[Path, int]], ahead: int) -> Iterator[list[Entry]]:
    """Each group of ``READ_GROUP`` samples, read, in order; about ``ahead`` files are in
    flight (one pool task per group)."""
    pending: deque[tuple[list[tuple[Path, int]], Future[list[Read]]]] = deque()
    starts = iter(range(0, len(samples), READ_GROUP))
    queued = 0
    while True:
        while queued < ahead and (start := next(starts, None)) is not None:
            part = samples[start:start + READ_GROUP]
            pending.append((part, pool.submit(_each, read, [p for p, _ in part])))
            queued += len(part)
        if not pending:
            return
        part, fut = pending.popleft()
        queued -= len(part)
        yield [Entry(path, label, *got) for (path, label), got in zip(part, fut.result())]

"""The GPU input's switches and its process-wide state, each in one place.

``Options.from_env()`` reads them when a pipeline starts: ``POCHI_READER`` (auto, thread,
python: no torchvision reader, process: the reader process for any pass),
``POCHI_READ_THREADS`` and ``POCHI_GPU_RESIZE=matmul`` (never the Triton kernels).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from pochitrain.errors import first_line

# threads reading files: inference is fastest with one, training with four (docs/benchmarks.md)
READ_THREADS = {"inference": 1, "training": 4}
SWITCH_INTERVAL = 1e-4  # seconds; see quick_gil_handoff
# passes over at least this many files read them in a helper process (read_proc.py)
PROCESS_READER_MIN_FILES = 4096


@dataclass(frozen=True)
class Options:
    reader: str = "auto"  # auto | thread | python | process
    read_threads: int | None = None  # None: READ_THREADS for the use
    gpu_resize: str = "auto"  # "auto" or "matmul"

    @classmethod
    def from_env(cls) -> Options:
        reader = os.environ.get("POCHI_READER", "").strip() or "auto"
        threads = os.environ.get("POCHI_READ_THREADS", "").strip()
        count = None
        if threads.isdigit() and int(threads) > 0:
            count = int(threads)
        elif threads:
            _warn_once(f"POCHI_READ_THREADS={threads!r} is not a positive whole number; "
                       "ignored (using the default).")
        resize = os.environ.get("POCHI_GPU_RESIZE", "").strip() or "auto"
        return cls(reader=reader, read_threads=count, gpu_resize=resize)

    @property
    def native_reads(self) -> bool:
        """Whether files may be read by torchvision's C++ reader."""
        return self.reader != "python"


def read_threads(use: str = "inference") -> int:
    """Threads that read files. Reading a cached file takes microseconds and holds the GIL
    for most of them: many threads mostly fight over it, so few are used."""
    return Options.from_env().read_threads or min(READ_THREADS[use], os.cpu_count() or 1)


@functools.cache  # each warning once per process
def _warn_once(message: str) -> None:
    from pochitrain.console import warn

    warn(message)


class GilHandoff:
    """The process's thread switch interval while GPU input pipelines run (they nest).

    Readers release the GIL for each system call; at the default 5 ms interval each of them
    then waits that long behind a thread running Python code (the decode or batch thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._before = 0.0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._before = sys.getswitchinterval()
                sys.setswitchinterval(min(self._before, SWITCH_INTERVAL))
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    sys.setswitchinterval(self._before)


quick_gil_handoff = GilHandoff()


class KernelHealth:
    """Whether the Triton kernels failed in this process (then the matmuls run)."""

    broken: str | None = None

    def fail(self, exc: BaseException, what: str) -> None:
        """Record the first failure and say it once."""
        if self.broken is None:
            self.broken = f"{type(exc).__name__}: {first_line(exc, 200)}"
            from pochitrain.console import warn

            warn(f"GPU {what} kernels unavailable ({self.broken}); using the matmuls.")


KERNELS = KernelHealth()

"""One prefetcher: a generator run ahead in a thread, on its own CUDA stream, through a
bounded queue of ``depth`` items. On CUDA an item is complete for the consumer's stream when
handed over: ``handoff="sync"`` synchronizes the thread's stream; ``handoff="event"`` has the
consumer's stream wait for an event and marks ``tensors(item)`` used there (``record_stream``).

An exception in the thread is raised in the consumer (``on_error`` may replace it first);
closing the generator stops the thread.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
_DONE = object()  # the end of the items
# CUDA stream priority of the producer threads (lower numbers come first; 0, the default, is
# the lowest): the input's short kernels go before a model's that fills the GPU
STREAM_PRIORITY = -1


def prefetch(make: Callable[[], Iterable[T]], device: str, *, depth: int = 2,
             name: str = "pochi-prefetch", handoff: str = "sync",
             tensors: Callable[[T], Iterable[torch.Tensor | None]] | None = None,
             on_error: Callable[[BaseException], BaseException] | None = None,
             ) -> Generator[T, None, None]:
    import torch

    cuda = device.startswith("cuda")
    out: queue.Queue[Any] = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def put(item: Any) -> None:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                out.put(item, timeout=0.1)
                return

    def produce() -> None:
        try:
            stream = torch.cuda.Stream(device, priority=STREAM_PRIORITY) if cuda else None
            ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
            with ctx:
                for item in make():
                    event = None
                    if stream is not None and handoff == "sync":
                        stream.synchronize()  # complete before another stream reads it
                    elif stream is not None:
                        event = torch.cuda.Event()
                        event.record(stream)
                    put((item, event))  # the event: recorded on its stream once made
                    if stop.is_set():  # the consumer is gone: make no more
                        return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(on_error(exc) if on_error is not None else exc)
        finally:
            put(_DONE)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            got = out.get()
            if got is _DONE:
                return
            if isinstance(got, BaseException):
                raise got
            item, event = got
            if event is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                for t in tensors(item) if tensors is not None else ():
                    if t is not None:
                        t.record_stream(current)
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)

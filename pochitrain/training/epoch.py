"""One pass over a loader (train or evaluate), and Ctrl+C that stops after the current batch."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from pochitrain.console import TERMINATING_SIGNALS, received_signals
from pochitrain.errors import TrainingError


@dataclass
class EpochStats:
    loss: float = 0.0
    accuracy: float = 0.0
    images: int = 0
    seconds: float = 0.0
    skipped: set[int] = field(default_factory=set)
    interrupted: bool = False
    confusion: Any = None  # (K, K) int64 tensor [true, predicted] when num_classes is given


def _diverged(value: float, optimizer: Any, done: int) -> TrainingError:
    where = "training" if optimizer is not None else "validation"
    lr = f" (learning_rate {optimizer.param_groups[0]['lr']:g})" if optimizer else ""
    return TrainingError(
        "損失が発散しました\n"
        f"The {where} loss became {value} after {done} images of this epoch{lr}: the model's "
        "weights diverged, so nothing from this epoch is saved.",
        "Lower learning_rate (e.g. 10x), make every class_weights value positive, or use "
        "mixed_precision = 'bf16' / 'off' instead of 'fp16'.")


class _Tally:
    """Loss, correct predictions and the confusion counts of one epoch. The counts stay on
    the device; each batch's loss is read on the host one batch late (:meth:`settle`), so
    the host queues batch k+1 while the GPU still runs batch k instead of waiting for it."""

    def __init__(self, num_classes: int | None, device: str) -> None:
        self.num_classes = num_classes
        self.total_loss = 0.0
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.confusion = (torch.zeros(num_classes * num_classes, dtype=torch.int64,
                                      device=device) if num_classes else None)
        self.pending: tuple[torch.Tensor, int] | None = None  # last batch's loss, images

    def add(self, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor, n: int) -> None:
        predicted = logits.detach().argmax(1)
        self.correct += (predicted == y).sum()
        if self.confusion is not None:
            self.confusion += torch.bincount(y * int(self.num_classes or 1) + predicted,
                                             minlength=self.confusion.numel())
        self.pending = (loss.detach(), n)

    def settle(self) -> tuple[float, int] | None:
        """The pending batch's (loss, images), its loss now counted; None if none. Not
        finite: the caller stops (``_diverged``)."""
        if self.pending is None:
            return None
        loss, n = self.pending
        self.pending = None
        value = float(loss)
        self.total_loss += value * n
        return value, n

    def finish(self, stats: EpochStats) -> None:
        if self.confusion is not None:
            stats.confusion = self.confusion.view(-1, int(self.num_classes or 1)).cpu()
        if stats.images:
            stats.loss = self.total_loss / stats.images
            stats.accuracy = int(self.correct) / stats.images


def _update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: Any,
            after_backward: Callable[[], None] | None) -> None:
    """Backward pass and optimizer step (through the fp16 gradient scaler when given)."""
    optimizer.zero_grad(set_to_none=True)
    (loss if scaler is None else scaler.scale(loss)).backward()
    if after_backward is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        after_backward()
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def _count(settled: tuple[float, int] | None, stats: EpochStats, optimizer: Any,
           on_batch: Callable[[int, float], None] | None) -> None:
    """A settled batch into ``stats`` (which holds the batches before it) and the progress
    bar; a loss that is not finite stops the run."""
    if settled is None:
        return
    value, n = settled
    if not math.isfinite(value):
        raise _diverged(value, optimizer, stats.images)
    stats.images += n
    if on_batch is not None:
        on_batch(n, value)


def drop_error_frames(batches: Any) -> Iterator[Any]:
    """The items of ``batches`` (a DataLoader or its iterator). A DataLoader raises a worker's
    error from a local variable, so that frame and the error refer to each other and keep the
    iterator and its worker processes alive until a garbage collection, in which their
    shutdown waits out a timeout (5 s) per worker. The error goes on without that traceback
    (the worker's is in its message)."""
    items = iter(batches)
    while True:
        try:
            batch = next(items)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - passed on, unchanged but for its traceback
            raise exc.with_traceback(None)
        yield batch


@contextlib.contextmanager
def cudnn_benchmark(on: bool) -> Iterator[None]:
    """``torch.backends.cudnn.benchmark = on`` inside; the setting before is put back."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def untimed_convolutions(on: bool) -> contextlib.AbstractContextManager[None]:
    """cuDNN's heuristics instead of its autotuning while ``on``: for the shorter last batch,
    a shape seen once an epoch, timing every algorithm costs more than it gains."""
    return cudnn_benchmark(torch.backends.cudnn.benchmark and not on)


def autocast(device: str, amp_dtype: torch.dtype | None) -> torch.autocast:
    """Mixed precision in ``amp_dtype`` on ``device``'s type (None: plain fp32)."""
    return torch.autocast(device.split(":")[0], dtype=amp_dtype or torch.float32,
                          enabled=amp_dtype is not None)


def run_epoch(model: nn.Module, loader: DataLoader, criterion: nn.Module, device: str, *,
              optimizer: torch.optim.Optimizer | None = None,
              stop: threading.Event | None = None,
              on_batch: Callable[[int, float], None] | None = None,
              amp_dtype: torch.dtype | None = None, channels_last: bool = False,
              scaler: Any = None, non_blocking: bool | None = None,
              num_classes: int | None = None,
              after_backward: Callable[[], None] | None = None) -> EpochStats:
    """Train (with ``optimizer``) or evaluate (without) for one pass over ``loader``.

    ``amp_dtype``: autocast dtype (None: fp32); ``scaler``: a ``torch.amp.GradScaler`` for fp16.

    ``stop`` set during training ends the epoch after the current batch (Ctrl+C).
    ``on_batch(images_in_batch, loss)`` drives a progress bar, one batch late (reading a
    batch's loss waits for its GPU work).
    ``non_blocking``: async host-to-GPU copies (None: on with CUDA; config gpu_non_blocking).
    ``num_classes``: also count the confusion matrix (``stats.confusion``).
    ``after_backward()``: called after each backward pass, gradients unscaled (gradient
    tracking).
    """
    model.train(optimizer is not None)
    stats = EpochStats()
    device_type = device.split(":")[0]
    if non_blocking is None:
        non_blocking = device_type == "cuda"
    tally = _Tally(num_classes, device)
    full = getattr(loader, "batch_size", None)  # None (a batch sampler): every batch tuned
    start = time.perf_counter()
    with torch.enable_grad() if optimizer is not None else torch.inference_mode():
        for batch in drop_error_frames(loader):
            stats.skipped.update(batch.skipped)
            if batch.images is None or batch.labels is None:
                continue
            x = batch.images.to(device, non_blocking=non_blocking)
            y = batch.labels.to(device, non_blocking=non_blocking)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with untimed_convolutions(full is not None and len(y) != full):
                with autocast(device, amp_dtype):
                    logits = model(x)
                    loss = criterion(logits, y)
                if optimizer is not None:
                    _update(loss, optimizer, scaler, after_backward)
            settled = tally.settle()  # the previous batch: its GPU work is done or nearly
            tally.add(logits, y, loss, int(y.shape[0]))
            _count(settled, stats, optimizer, on_batch)
            if optimizer is not None and stop is not None and stop.is_set():
                stats.interrupted = True
                break
        _count(tally.settle(), stats, optimizer, on_batch)
    if device_type == "cuda":
        torch.cuda.synchronize()
    stats.seconds = time.perf_counter() - start
    tally.finish(stats)
    return stats


@contextlib.contextmanager
def stop_on_ctrl_c(on_first: Callable[[], None] | None = None) -> Iterator[threading.Event]:
    """First Ctrl+C sets the event (the loop stops after the current batch); a second one
    raises KeyboardInterrupt as usual. Outside the main thread the event is only set by hand."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, frame: Any) -> None:
        if signum != signal.SIGINT:
            received_signals.append(signum)
        if event.is_set():
            raise KeyboardInterrupt
        event.set()
        if on_first is not None:
            on_first()

    signals = (signal.SIGINT, *TERMINATING_SIGNALS)  # SIGTERM too: a `kill` stops as gently
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield event
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def warm_up(model: nn.Module, input_size: list[int], batch_sizes: list[int], device: str, *,
            eval_sizes: list[int] | None = None,
            amp_dtype: torch.dtype | None = None, channels_last: bool = False,
            criterion: nn.Module | None = None, optimizer: Any = None,
            num_classes: int | None = None) -> float:
    """Seconds spent running what an epoch runs once per batch shape, on zeros, so that
    cuDNN's autotuning (of the first, full size of each list) and the lazy loading of CUDA
    kernels happen before epoch 1 is timed:
    a train step per ``batch_sizes`` (train-mode BatchNorm has its own kernels), the update
    kernels of ``optimizer``'s class (on scratch copies), an eval pass per ``eval_sizes``
    (default: ``batch_sizes``). Buffers, random states and gradients are put back; the DDP
    wrapper is bypassed. A train shape of one image is skipped (BatchNorm cannot train on
    it; the loaders drop such a batch)."""
    net = getattr(model, "module", model)
    was_training = net.training
    start = time.perf_counter()
    buffers = {name: b.detach().clone() for name, b in net.named_buffers()}
    devices = [torch.device(device)] if device.startswith("cuda") else []
    try:
        with torch.random.fork_rng(devices=devices):
            net.train()
            for n in dict.fromkeys(n for n in batch_sizes if n > 1):  # each shape once
                with untimed_convolutions(n != batch_sizes[0]):  # as run_epoch runs it
                    _warm_step(net, n, input_size, device, amp_dtype, channels_last,
                               criterion, num_classes)
            net.eval()  # and validation's kernels, for ``eval_sizes`` (default: the same)
            evals = batch_sizes if eval_sizes is None else eval_sizes
            with torch.inference_mode():
                for n in dict.fromkeys(evals):
                    with untimed_convolutions(n != evals[0]):
                        _warm_forward(net, n, input_size, device, amp_dtype, channels_last)
            if optimizer is not None:
                _warm_optimizer(optimizer)
    finally:
        net.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, b in net.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
        net.train(was_training)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _warm_forward(net: nn.Module, n: int, input_size: list[int], device: str,
                  amp_dtype: torch.dtype | None, channels_last: bool) -> torch.Tensor:
    x = torch.zeros((n, 3, *input_size), device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, amp_dtype):
        return net(x)


def _warm_step(net: nn.Module, n: int, input_size: list[int], device: str,
               amp_dtype: torch.dtype | None, channels_last: bool,
               criterion: nn.Module | None, num_classes: int | None) -> None:
    y = torch.zeros(n, dtype=torch.int64, device=device)
    out = _warm_forward(net, n, input_size, device, amp_dtype, channels_last)
    with autocast(device, amp_dtype):
        loss = criterion(out, y) if criterion is not None else out.float().sum()
    loss.backward()
    tally = _Tally(num_classes, device)  # run_epoch's counting
    tally.add(out, y, loss, n)
    tally.settle()


def _warm_optimizer(optimizer: Any) -> None:
    """One step of a fresh optimizer of the same class and settings on copies of a few of the
    parameters (one per dtype and device): loads its update kernels, leaves the real one
    alone. Optimizers that cannot be made this way are skipped."""
    seen: dict[tuple[Any, Any], Any] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            seen.setdefault((p.dtype, p.device), p)
    scratch = [p.detach().clone().requires_grad_(True) for p in seen.values()]
    for q in scratch:
        q.grad = torch.zeros_like(q)
    try:
        twin = type(optimizer)(scratch, **optimizer.defaults)
    except (TypeError, ValueError):
        return
    twin.step()

"""The training loop and its parts: datasets that skip corrupt files, optimizers, schedulers,
early stopping, per-epoch metrics (CSV + PNG) and Ctrl+C handling.

Device-aware from the start: batches are copied with ``non_blocking=True`` (useful with the
pinned memory the loaders use on CUDA), and :func:`run_epoch` takes ``amp_dtype`` (autocast,
e.g. torch.bfloat16) and ``channels_last`` so GPU options can be switched on without touching
the loop. :func:`resolve_precision` turns the config keys ``mixed_precision`` and
``channels_last`` into those arguments for a device (bf16 + channels_last on GPUs that support
bf16; both off on the CPU); fp16 adds a ``torch.amp.GradScaler``.
"""

from __future__ import annotations

import contextlib
import csv
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pochitrain.data import ImageFolder, open_rgb
from pochitrain.errors import ConfigError

METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                  "images_per_second", "seconds")


# ---- data ----------------------------------------------------------------------------------

class ImageDataset(Dataset):
    """``(tensor, label, index, path)``; tensor is None when the file cannot be decoded."""

    def __init__(self, folder: ImageFolder, transform: Callable[[Any], Any]) -> None:
        self.samples = folder.samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int, int, Path]:
        path, label = self.samples[index]
        image = open_rgb(path)
        return (None if image is None else self.transform(image)), label, index, path


@dataclass
class Batch:
    images: torch.Tensor | None
    labels: torch.Tensor | None
    skipped: list[int]  # dataset indices of undecodable files


def collate_skipping(items: list[tuple[Any, ...]]) -> Batch:
    """Items ``(tensor or None, label, index[, path])`` -> one Batch; undecodable files are
    listed in ``skipped``. Tensors of different shapes are a DataError naming one file."""
    good = [(x, y) for x, y, *_ in items if x is not None]
    skipped = [i for x, _, i, *_ in items if x is None]
    if not good:
        return Batch(None, None, skipped)
    shapes = [tuple(x.shape) for x, _ in good]
    if len(set(shapes)) > 1:
        from collections import Counter

        from pochitrain.errors import DataError

        common = Counter(shapes).most_common(1)[0][0]
        odd = next(item for item in items if item[0] is not None
                   and tuple(item[0].shape) != common)
        name = str(odd[3]) if len(odd) > 3 else f"dataset item {odd[2]}"
        raise DataError(
            f"Images of one batch have different sizes after the transform: {name} gives a "
            f"tensor of shape {tuple(odd[0].shape)}, other images {common}.",
            "Add transforms.Resize((H, W)) to the config's train_transform (and val_transform) "
            "so that every image has the same size, e.g. the model's input_size.")
    return Batch(torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), skipped)


def _init_worker(worker_id: int) -> None:
    """DataLoader worker: leave Ctrl+C to the main process (which stops after the current
    batch), and seed NumPy from the worker's torch seed for reproducible augmentation."""
    import numpy as np

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    np.random.seed(torch.initial_seed() % 2**32)


def make_loader(folder: ImageFolder, transform: Callable[[Any], Any], *, batch_size: int,
                shuffle: bool, num_workers: int, device: str, seed: int | None) -> DataLoader:
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    return DataLoader(
        ImageDataset(folder, transform), batch_size=batch_size, shuffle=shuffle,
        num_workers=num_workers, collate_fn=collate_skipping, generator=generator,
        pin_memory=device.startswith("cuda"), persistent_workers=num_workers > 0,
        worker_init_fn=_init_worker if num_workers > 0 else None,
    )


def seed_everything(seed: int | None) -> None:
    if seed is None:
        return
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- optimizer, scheduler, early stopping ---------------------------------------------------

def build_optimizer(name: str, params: Any, lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "Adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "AdamW":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"Unknown optimizer {name!r}.", "Use SGD, Adam or AdamW.")


def build_scheduler(name: str | None, params: dict[str, Any],
                    optimizer: torch.optim.Optimizer) -> Any:
    """A per-epoch LR scheduler (stepped once after each epoch), or None."""
    if name is None:
        return None
    cls = getattr(torch.optim.lr_scheduler, name)
    try:
        return cls(optimizer, **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"scheduler {name} rejected scheduler_params {params!r}: {exc}",
                          "Fix scheduler_params in the config (see torch.optim.lr_scheduler)."
                          ) from exc


class EarlyStopping:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs."""

    def __init__(self, patience: int = 5, min_delta: float = 0.0,
                 monitor: str = "val_accuracy") -> None:
        self.patience, self.min_delta, self.monitor = patience, min_delta, monitor
        self.best: float | None = None
        self.bad_epochs = 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.monitor == "val_loss":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, metrics: dict[str, float]) -> bool:
        """Record an epoch; True when training should stop."""
        value = metrics[self.monitor]
        if self._improved(value):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience


# ---- precision and layout ------------------------------------------------------------------

@dataclass(frozen=True)
class Precision:
    """What ``mixed_precision`` / ``channels_last`` resolved to on a device."""

    name: str  # "bf16" | "fp16" | "off"
    channels_last: bool

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def grad_scaler(self, device: str) -> Any:
        """fp16 needs loss scaling (small gradients underflow); bf16 and fp32 do not."""
        if self.name != "fp16":
            return None
        return torch.amp.GradScaler(device.split(":")[0])


def _bf16_ok(device: str) -> bool:
    # capability, not torch.cuda.is_bf16_supported(): that also says yes for slow emulation
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_precision(mixed_precision: str, channels_last: bool | str, device: str) -> Precision:
    """``auto`` -> bf16 on CUDA GPUs with bfloat16 support (compute capability >= 8.0), fp16 on
    older GPUs, off on the CPU; ``channels_last="auto"`` -> True on CUDA. Asking for bf16/fp16
    on the CPU, or bf16 on a GPU without it, is a ConfigError (exit 2) naming the fix."""
    on_gpu = device.startswith("cuda")
    name = mixed_precision
    if name == "auto":
        name = ("bf16" if _bf16_ok(device) else "fp16") if on_gpu else "off"
    elif name in ("bf16", "fp16") and not on_gpu:
        raise ConfigError(
            f"mixed_precision = {name!r} needs a CUDA GPU, but this run uses the CPU "
            f"(device = {device!r}).",
            "Set mixed_precision = 'auto' (bf16 on a GPU, off on the CPU) or 'off'.")
    elif name == "bf16" and not _bf16_ok(device):
        raise ConfigError("mixed_precision = 'bf16' but this GPU has no bfloat16 support "
                          "(needs compute capability 8.0 or newer).",
                          "Set mixed_precision = 'fp16' (or 'auto', which picks it here).")
    cl = on_gpu if channels_last == "auto" else bool(channels_last)
    return Precision(name, cl)


# ---- one epoch ------------------------------------------------------------------------------

@dataclass
class EpochStats:
    loss: float = 0.0
    accuracy: float = 0.0
    images: int = 0
    seconds: float = 0.0
    skipped: set[int] = field(default_factory=set)
    interrupted: bool = False


def run_epoch(model: nn.Module, loader: DataLoader, criterion: nn.Module, device: str, *,
              optimizer: torch.optim.Optimizer | None = None,
              stop: threading.Event | None = None,
              on_batch: Callable[[int, float], None] | None = None,
              amp_dtype: torch.dtype | None = None, channels_last: bool = False,
              scaler: Any = None) -> EpochStats:
    """Train (with ``optimizer``) or evaluate (without) for one pass over ``loader``.

    ``amp_dtype``: autocast dtype (None: fp32); ``scaler``: a ``torch.amp.GradScaler`` for fp16.

    ``stop`` set during training ends the epoch after the current batch (Ctrl+C).
    ``on_batch(images_in_batch, loss)`` drives a progress bar.
    """
    training = optimizer is not None
    model.train(training)
    stats = EpochStats()
    total_loss, correct = 0.0, 0
    device_type = device.split(":")[0]
    non_blocking = device_type == "cuda"
    start = time.perf_counter()
    grad = torch.enable_grad() if training else torch.inference_mode()
    with grad:
        for batch in loader:
            stats.skipped.update(batch.skipped)
            if batch.images is None or batch.labels is None:
                continue
            x = batch.images.to(device, non_blocking=non_blocking)
            y = batch.labels.to(device, non_blocking=non_blocking)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                logits = model(x)
                loss = criterion(logits, y)
            if training:
                optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()  # type: ignore[union-attr]
            n = int(y.shape[0])
            loss_value = float(loss.detach())
            total_loss += loss_value * n
            correct += int((logits.detach().argmax(1) == y).sum())
            stats.images += n
            if on_batch is not None:
                on_batch(n, loss_value)
            if training and stop is not None and stop.is_set():
                stats.interrupted = True
                break
    if device_type == "cuda":
        torch.cuda.synchronize()
    stats.seconds = time.perf_counter() - start
    if stats.images:
        stats.loss, stats.accuracy = total_loss / stats.images, correct / stats.images
    return stats


# ---- metrics: CSV + plots ---------------------------------------------------------------------

@dataclass
class EpochRow:
    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    images_per_second: float
    seconds: float


class MetricsLog:
    """training_metrics.csv plus loss.png / accuracy.png, rewritten (atomically) every epoch."""

    def __init__(self, run_dir: Path, plots: bool = True) -> None:
        self.run_dir = run_dir
        self.rows: list[EpochRow] = []
        self.plots = plots
        self.csv_path = run_dir / "training_metrics.csv"

    def add(self, row: EpochRow) -> None:
        self.rows.append(row)
        self._write_csv()
        if self.plots:
            plot_metrics(self.rows, self.run_dir)

    def _write_csv(self) -> None:
        from pochitrain.workspace import atomic_path

        with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="",
                                                     encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(METRIC_COLUMNS)
            for r in self.rows:
                d = asdict(r)
                writer.writerow([d["epoch"], f"{d['lr']:.6g}"]
                                + [f"{d[c]:.6f}" for c in METRIC_COLUMNS[2:6]]
                                + [f"{d['images_per_second']:.1f}", f"{d['seconds']:.2f}"])


def plot_metrics(rows: list[EpochRow], out_dir: Path) -> None:
    """loss.png and accuracy.png: train and val curves over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pochitrain.workspace import atomic_path

    epochs = [r.epoch for r in rows]
    for name, train_key, val_key, label in (
        ("loss.png", "train_loss", "val_loss", "loss"),
        ("accuracy.png", "train_accuracy", "val_accuracy", "accuracy"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        ax.plot(epochs, [getattr(r, train_key) for r in rows], "o-", label=f"train {label}")
        ax.plot(epochs, [getattr(r, val_key) for r in rows], "s-", label=f"val {label}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)


# ---- Ctrl+C ---------------------------------------------------------------------------------

@contextlib.contextmanager
def stop_on_ctrl_c(on_first: Callable[[], None] | None = None) -> Iterator[threading.Event]:
    """First Ctrl+C sets the event (the loop stops after the current batch); a second one
    raises KeyboardInterrupt as usual. Outside the main thread the event is only set by hand."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, frame: Any) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()
        if on_first is not None:
            on_first()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous)

"""``fit``: the epoch loop, and ``CheckpointKeeper``: the best/last checkpoint files.

Per epoch: train (Ctrl+C stops after the current batch) -> validate -> step the scheduler ->
metrics row (CSV + PNG) -> best checkpoint when val accuracy improved -> early stopping ->
the last checkpoint, with the state to resume from (``training.resume``). A Ctrl+C inside the
first epoch writes the last checkpoint at that moment. A non-finite loss or an unreadable
split stops with a clear error before anything is saved from that epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from pochitrain.console import info, make_progress, warn
from pochitrain.errors import DataError, first_line
from pochitrain.training.distributed import Distributed, SyncedStop
from pochitrain.training.epoch import EpochStats, run_epoch, stop_on_ctrl_c, warm_up
from pochitrain.training.metrics import EpochRow, MetricsLog
from pochitrain.training.resume import RESUME_KEY, capture, restore

if TYPE_CHECKING:
    import threading

    import torch
    from torch import nn

    from pochitrain.training.observers import RunObserver
    from pochitrain.training.optim import EarlyStopping
    from pochitrain.training.precision import Precision


class CheckpointKeeper:
    """``models/best_epochN.pth`` (only the current best is kept) and ``models/last_model.pth``.

    ``snapshot(extra)`` takes the file's content when it is asked for (weights, metadata and
    ``extra``, every tensor copied: ``checkpoint.snapshot``; None on a rank that writes
    nothing); ``write(path, payload)`` writes it atomically, in a thread of its own, in order,
    while the training goes on. ``close`` (or leaving the ``with`` block) waits for the files;
    a write that failed is raised by the next save or by ``close``.
    """

    def __init__(self, models_dir: Path, snapshot: Callable[[dict[str, Any]], Any] | None,
                 write: Callable[[Path, Any], None]) -> None:
        self.models_dir = models_dir
        self._snapshot, self._write = snapshot, write
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="pochi-checkpoint")
        self._queued: list[Future[None]] = []
        self.best_path: Path | None = None
        self.best_epoch: int | None = None
        self.best_accuracy: float | None = None
        self.last_path: Path | None = None

    def offer(self, epoch: int, accuracy: float, extra: dict[str, Any]) -> bool:
        """Save as the new best when ``accuracy`` beats the best so far; True when it did."""
        if self.best_accuracy is not None and accuracy <= self.best_accuracy:
            return False
        path = self.models_dir / f"best_epoch{epoch}.pth"
        self._save(path, extra, replaces=self.best_path)
        self.best_path, self.best_epoch, self.best_accuracy = path, epoch, accuracy
        return True

    def save_last(self, extra: dict[str, Any]) -> None:
        self.last_path = self.models_dir / "last_model.pth"
        self._save(self.last_path, extra)

    def _save(self, path: Path, extra: dict[str, Any], replaces: Path | None = None) -> None:
        for done in [f for f in self._queued if f.done()]:
            self._queued.remove(done)
            done.result()  # an earlier file's error, raised here
        if self._snapshot is not None:
            payload = self._snapshot(extra)
            self._queued.append(self._writer.submit(self._write_file, path, payload, replaces))

    def _write_file(self, path: Path, payload: Any, replaces: Path | None) -> None:
        self._write(path, payload)
        if replaces is not None and replaces != path:
            replaces.unlink(missing_ok=True)

    def close(self) -> None:
        """Wait for the files still being written; raise the first write's error."""
        try:
            for queued in self._queued:
                queued.result()
        finally:
            self._queued.clear()
            self._writer.shutdown()

    def __enter__(self) -> CheckpointKeeper:  # noqa: PYI034
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        try:  # the files queued before the run's own error are still written
            self.close()
        except Exception as exc:  # the run's own error goes on
            if kind is None:
                raise
            warn(f"checkpoint not written ({type(exc).__name__}: {exc})")


@dataclass
class FitSetup:
    """What the loop runs: built by the train pipeline from a config."""

    model: nn.Module
    train_loader: Any  # a DataLoader, or the GPU input's loader (config gpu_input)
    val_loader: Any
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    stopper: EarlyStopping | None
    precision: Precision
    device: str
    epochs: int
    scaler: torch.amp.GradScaler | None = None
    distributed: Distributed | None = None  # when run as several ranks
    non_blocking: bool | None = None  # config gpu_non_blocking (None: on with CUDA)
    observer: RunObserver | None = None  # confusion log, TensorBoard, gradient tracking
    input_size: list[int] | None = None  # (H, W): on CUDA, the model is warmed up first
    resume: dict[str, Any] | None = None  # the state saved after an epoch (training.resume)


@dataclass
class FitOutcome:
    stopped_by: str = "completed"  # "completed" | "early_stopping" | "interrupted"
    epochs_run: int = 0
    skipped: dict[str, list[Path]] = field(default_factory=lambda: {"train": [], "val": []})

    def skipped_files(self) -> list[Path]:
        return [p for files in self.skipped.values() for p in files]


def _checked(out: FitOutcome, split: str, loader: Any, stats: EpochStats) -> EpochStats:
    """``stats`` of a pass over ``loader``, its unreadable images noted; a DataError when
    none could be read."""
    known = set(out.skipped[split])
    for index in sorted(stats.skipped):
        path = loader.dataset.samples[index][0]
        if path not in known:
            out.skipped[split].append(path)
            warn(f"skipped an unreadable image ({split}): {path}")
    if stats.images == 0 and not stats.interrupted:
        folder = Path(loader.dataset.samples[0][0]).parent.parent if loader.dataset.samples \
            else "?"
        raise DataError("画像を 1 枚も読み込めませんでした\n"
                        f"None of the {len(loader.dataset)} "
                        f"{'training' if split == 'train' else 'validation'} images could be "
                        f"read (in {folder}).",
                        "Check the files: they must be PNG / JPEG / BMP / WebP ... images.")
    return stats


def _epoch_line(epoch: int, total: int, lr: float, tr: EpochStats, va: EpochStats,
                best: bool) -> str:
    return (f"epoch {epoch}/{total}  lr {lr:.3g}  train loss {tr.loss:.4f} acc "
            f"{tr.accuracy:.2%}  val loss {va.loss:.4f} acc {va.accuracy:.2%}  "
            f"{tr.images / max(tr.seconds, 1e-9):.0f} img/s  {tr.seconds + va.seconds:.1f} s"
            + ("  [green]best[/green]" if best else ""))


EpochCallback = Callable[[int, dict[str, float]], None]
StopFlag: TypeAlias = "threading.Event | SyncedStop"  # Ctrl+C, agreed on by every rank under DDP


def _group_lrs(optimizer: Any) -> dict[str, float]:
    """Per-group learning rates by group name (layer-wise LR), {} with one group."""
    groups = optimizer.param_groups
    if len(groups) < 2:
        return {}
    return {str(g.get("name", i)): float(g["lr"]) for i, g in enumerate(groups)}


def batch_shapes(loader: Any) -> list[int]:
    """The batch sizes one epoch of ``loader`` runs: the full one and, unless dropped, the
    smaller last one (each a new shape for cuDNN's autotuning)."""
    size = getattr(loader, "batch_size", None)
    if not size:
        return []
    try:
        sampler = getattr(loader, "sampler", None)
        n = len(sampler) if sampler is not None else len(loader.dataset)
    except TypeError:  # a sampler without a length
        return [size]
    sizes = [size] if n >= size else []
    if n % size and not getattr(loader, "drop_last", False):
        sizes.append(n % size)
    return sizes


def _amp(s: FitSetup) -> dict[str, Any]:
    """The precision arguments of ``run_epoch`` and ``warm_up``."""
    return {"amp_dtype": s.precision.amp_dtype, "channels_last": s.precision.channels_last}


def _warm_up(s: FitSetup) -> None:
    watch = s.observer
    try:
        seconds = warm_up(s.model, s.input_size or [], batch_shapes(s.train_loader), s.device,
                          eval_sizes=batch_shapes(s.val_loader), **_amp(s),
                          criterion=s.criterion, optimizer=s.optimizer,
                          num_classes=watch.num_classes if watch else None)
        info(f"warm-up (cuDNN autotuning, CUDA kernel loading): {seconds:.1f} s")
    except Exception as exc:  # noqa: BLE001 - only a speed-up: training decides
        warn(f"warm-up skipped ({type(exc).__name__}: {first_line(exc, 160)})")


def _train_epoch(s: FitSetup, epoch: int, epoch_fn: Any, stop: StopFlag, bars: Any,
                 out: FitOutcome) -> EpochStats:
    """One training pass with its progress bar."""
    task = bars.add_task(f"epoch {epoch}/{s.epochs}", total=len(s.train_loader.dataset),
                         loss=0.0)
    watch = s.observer
    tr = epoch_fn(s.model, s.train_loader, s.criterion, s.device, optimizer=s.optimizer,
                  stop=stop, scaler=s.scaler, non_blocking=s.non_blocking, **_amp(s),
                  on_batch=lambda n, loss: bars.update(task, advance=n, loss=loss),
                  after_backward=watch.after_backward if watch else None)
    bars.remove_task(task)
    return _checked(out, "train", s.train_loader, tr)


def _validate(s: FitSetup, epoch_fn: Any, out: FitOutcome) -> EpochStats:
    watch = s.observer
    return _checked(out, "val", s.val_loader,
                    epoch_fn(s.model, s.val_loader, s.criterion, s.device, **_amp(s),
                             non_blocking=s.non_blocking,
                             num_classes=watch.num_classes if watch else None))


def _stopped_by(s: FitSetup, va: EpochStats, stop: StopFlag) -> str:
    """After a validated epoch: early stopping, Ctrl+C, or go on ("completed")."""
    by = "completed"
    if s.stopper is not None and s.stopper.step({"val_accuracy": va.accuracy,
                                                 "val_loss": va.loss}):
        by = "early_stopping"
        info(f"early stopping: {s.stopper.monitor} did not improve by more than "
             f"{s.stopper.min_delta} for {s.stopper.patience} epochs")
    if stop.is_set():
        by = "interrupted"
    return by


def fit(setup: FitSetup, keeper: CheckpointKeeper, log: MetricsLog,
        extras: Callable[[int, EpochStats, EpochStats | None], dict[str, Any]],
        progress: bool = True, on_epoch: EpochCallback | None = None) -> FitOutcome:
    """Run up to ``setup.epochs`` epochs; see the module docstring.

    ``on_epoch(epoch, {"val_accuracy", "val_loss", "train_accuracy", "train_loss", "lr"})``
    runs after each validated epoch (e.g. Optuna pruning: an exception it raises ends the
    run after that epoch's checkpoints are written).
    """
    s, out = setup, FitOutcome()
    if s.input_size is not None and s.device.startswith("cuda"):
        _warm_up(s)
    with stop_on_ctrl_c(lambda: warn("Ctrl+C: stopping after this batch "
                                     "(press again to abort now)")) as ctrl_c, \
            make_progress(progress, kind="loss") as bars:
        epoch_fn = run_epoch
        stop: StopFlag = ctrl_c
        if s.distributed is not None:  # one stop decision, metrics summed over ranks
            stop = SyncedStop(ctrl_c, s.distributed.device)
            epoch_fn = s.distributed.epoch_runner(run_epoch)
        first = restore(s, keeper, log, s.resume) if s.resume is not None else 1
        out.epochs_run = first - 1
        for epoch in range(first, s.epochs + 1):
            lr = float(s.optimizer.param_groups[0]["lr"])
            group_lrs = _group_lrs(s.optimizer)
            tr = _train_epoch(s, epoch, epoch_fn, stop, bars, out)
            if tr.interrupted:
                out.stopped_by = "interrupted"
                if keeper.last_path is None:  # else it holds the last finished epoch
                    keeper.save_last({**extras(epoch, tr, None), "interrupted": True})
                break
            va = _validate(s, epoch_fn, out)
            if s.scheduler is not None:
                s.scheduler.step()
            row = EpochRow(epoch, lr, tr.loss, tr.accuracy, va.loss, va.accuracy,
                           tr.images / max(tr.seconds, 1e-9), tr.seconds + va.seconds, group_lrs)
            log.add(row)
            if s.observer is not None:
                s.observer.epoch_end(row, va)
            out.epochs_run = epoch
            best = keeper.offer(epoch, va.accuracy, extras(epoch, tr, va))
            info(_epoch_line(epoch, s.epochs, lr, tr, va, best))
            if on_epoch is not None:
                on_epoch(epoch, {"val_accuracy": va.accuracy, "val_loss": va.loss,
                                 "train_accuracy": tr.accuracy, "train_loss": tr.loss,
                                 "lr": lr})
            out.stopped_by = _stopped_by(s, va, stop)
            keeper.save_last({**extras(epoch, tr, va),
                              RESUME_KEY: capture(s, keeper, log, epoch)})
            if epoch == s.epochs or out.stopped_by != "completed":
                break
    return out

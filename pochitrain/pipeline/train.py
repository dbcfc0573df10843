"""``pochi train``: config -> work_dirs/YYYYMMDD_NNN/ with checkpoints, metrics and plots.

Run folder layout::

    config.py               copy of the config file as given
    run.json                resolved settings, classes, preprocessing, versions, results
    models/best_epochN.pth  best validation accuracy so far (only the current best is kept)
    models/last_model.pth   the model after the last epoch (or after Ctrl+C)
    training_metrics.csv    one row per epoch, rewritten after every epoch
    loss.png, accuracy.png  curves, rewritten after every epoch
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pochitrain.config import Settings, load_config, preprocess_from_settings, resolve_device
from pochitrain.console import info, warn
from pochitrain.data import ImageFolder, check_classes, remap_labels, scan_image_folder
from pochitrain.errors import ConfigError, DataError
from pochitrain.meta import ModelMeta, file_sha256
from pochitrain.preprocess import Preprocess
from pochitrain.workspace import atomic_write_bytes, atomic_write_text, new_run_dir


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_epoch: int | None
    best_val_accuracy: float | None
    epochs_run: int
    stopped_by: str  # "completed" | "early_stopping" | "interrupted"
    seconds: float
    skipped_files: list[Path] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        return self.stopped_by == "interrupted"


@dataclass
class _Data:
    train: ImageFolder
    val: ImageFolder
    class_names: list[str]


def _check_data(settings: Settings) -> _Data:
    for key in ("train_data_root", "val_data_root"):
        if getattr(settings, key) is None:
            raise ConfigError(f"{key} is not set in {settings.config_path}.",
                              f"Add {key} = 'path/to/folder' (one sub-folder of images per "
                              "class; relative paths are read from the config's folder).")
    train = scan_image_folder(settings.train_data_root or "", "training data folder "
                              "(train_data_root)", allow_unlabelled=False)
    val = scan_image_folder(settings.val_data_root or "", "validation data folder "
                            "(val_data_root)", allow_unlabelled=False)
    if len(train.classes) < 2:
        raise DataError(f"The training data folder has only one class: {train.root}",
                        "A classifier needs at least two class sub-folders.")
    check_classes(val, train.classes)
    val = remap_labels(val, train.classes)
    n = len(train.classes)
    if settings.num_classes is not None and settings.num_classes != n:
        raise ConfigError(
            f"num_classes = {settings.num_classes} but {train.root} has {n} class folders "
            f"({', '.join(train.classes)}).",
            f"Set num_classes = {n}, or remove it (None) to use the number of folders.",
        )
    if settings.class_weights is not None and len(settings.class_weights) != n:
        raise ConfigError(
            f"class_weights has {len(settings.class_weights)} values but there are {n} classes.",
            f"Give one weight per class, in this order: {', '.join(train.classes)}.",
        )
    return _Data(train, val, list(train.classes))


def _preprocess(settings: Settings) -> Preprocess:
    pre = preprocess_from_settings(settings)
    if settings.input_size is not None and list(settings.input_size) != pre.input_size:
        raise ConfigError(
            f"input_size = {settings.input_size} but val_transform produces {pre.input_size}.",
            "Make them agree (or remove input_size: it is read from val_transform).",
        )
    return pre


def _versions() -> dict[str, str]:
    import torch
    import torchvision

    from pochitrain import __version__

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pochitrain": __version__,
            "platform": platform.platform()}


def _progress(enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from pochitrain.console import console

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console(), transient=True,
                    disable=not enabled)


def train(config: Path | str, *, overrides: dict[str, Any] | None = None,
          work_dir: Path | str | None = None, progress: bool = True) -> TrainResult:
    """Train from a config file; see the module docstring for what is written.

    ``overrides`` replace config keys (validated like the file); ``work_dir`` replaces the
    config's work_dir (relative to the current directory).
    """
    import torch

    from pochitrain import training as T
    from pochitrain.models import build_model, save_checkpoint

    settings = load_config(config, overrides)
    config_path = Path(settings.config_path or config)
    device = resolve_device(settings.device)
    data = _check_data(settings)
    pre = _preprocess(settings)
    val_tf = settings.val_transform
    train_tf = settings.train_transform or val_tf
    if settings.train_transform is None:
        info("train_transform is not set: training uses val_transform (no augmentation).")

    precision = T.resolve_precision(settings.mixed_precision, settings.channels_last, device)
    T.seed_everything(settings.seed)
    model = build_model(settings.model_name, len(data.class_names), settings.pretrained)
    model.to(device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    scaler = precision.grad_scaler(device)
    meta = ModelMeta(data.class_names, pre, model_name=settings.model_name,
                     source={"config_sha256": file_sha256(config_path),
                             "train_data_fingerprint": data.train.fingerprint()})
    train_loader, val_loader = (
        T.make_loader(folder, tf, shuffle=shuffle, batch_size=settings.batch_size,
                      num_workers=settings.num_workers, device=device, seed=settings.seed)
        for folder, tf, shuffle in ((data.train, train_tf, True), (data.val, val_tf, False)))
    weight = (torch.tensor(settings.class_weights, dtype=torch.float32, device=device)
              if settings.class_weights else None)
    criterion = torch.nn.CrossEntropyLoss(weight=weight)
    optimizer = T.build_optimizer(settings.optimizer, model.parameters(), settings.learning_rate,
                                  settings.weight_decay, settings.momentum)
    scheduler = T.build_scheduler(settings.scheduler, settings.scheduler_params, optimizer)
    stopper = T.EarlyStopping(**settings.early_stopping) if settings.early_stopping else None

    run_dir = new_run_dir(Path(work_dir).resolve() if work_dir else settings.work_dir)
    models_dir = run_dir / "models"
    models_dir.mkdir()
    atomic_write_bytes(run_dir / "config.py", config_path.read_bytes())
    run_info: dict[str, Any] = {
        "status": "running",
        "config_path": str(config_path),
        "settings": {**settings.to_dict(), "device_resolved": device,
                     "mixed_precision_resolved": precision.name,
                     "channels_last_resolved": precision.channels_last,
                     "num_classes": len(data.class_names), "input_size": pre.input_size},
        "class_names": data.class_names,
        "num_classes": len(data.class_names),
        "input_size": pre.input_size,
        "mean": pre.mean,
        "std": pre.std,
        "preprocess": pre.to_dict(),
        "data": {"train_root": str(data.train.root), "val_root": str(data.val.root),
                 "train_images": len(data.train.samples), "val_images": len(data.val.samples)},
        "versions": _versions(),
        "skipped_files": [],
    }
    _write_run_json(run_dir, run_info)
    info(f"training {settings.model_name} on {device} (mixed precision {precision.name}, "
         f"channels_last {'on' if precision.channels_last else 'off'}): "
         f"{len(data.train.samples)} train / "
         f"{len(data.val.samples)} val images, {len(data.class_names)} classes -> {run_dir}")

    log = T.MetricsLog(run_dir)
    skipped: dict[str, list[Path]] = {"train": [], "val": []}
    best_acc: float | None = None
    best_epoch: int | None = None
    best_path: Path | None = None
    last_path: Path | None = None
    stopped_by, epoch = "completed", 0
    started = time.perf_counter()

    def note_skipped(split: str, folder: ImageFolder, indices: set[int]) -> None:
        known = set(skipped[split])
        for i in sorted(indices):
            path = folder.samples[i][0]
            if path not in known:
                skipped[split].append(path)
                warn(f"skipped an unreadable image ({split}): {path}")

    def extras(ep: int, tr: T.EpochStats, va: T.EpochStats | None) -> dict[str, Any]:
        return {"epoch": ep, "train_loss": tr.loss, "train_accuracy": tr.accuracy,
                "val_loss": va.loss if va else None, "val_accuracy": va.accuracy if va else None,
                "optimizer": settings.optimizer, "learning_rate": settings.learning_rate}

    try:
        with T.stop_on_ctrl_c(lambda: warn("Ctrl+C: stopping after this batch "
                                           "(press again to abort now)")) as stop, \
                _progress(progress) as bars, _cudnn_autotune(device):
            for epoch in range(1, settings.epochs + 1):
                lr = float(optimizer.param_groups[0]["lr"])
                task = bars.add_task(f"epoch {epoch}/{settings.epochs}",
                                     total=len(data.train.samples), loss=0.0)

                def advance(n: int, loss: float, task: Any = task) -> None:
                    bars.update(task, advance=n, loss=loss)

                tr = T.run_epoch(model, train_loader, criterion, device, optimizer=optimizer,
                                 stop=stop, on_batch=advance, amp_dtype=precision.amp_dtype,
                                 channels_last=precision.channels_last, scaler=scaler)
                bars.remove_task(task)
                note_skipped("train", data.train, tr.skipped)
                if tr.images == 0:
                    raise DataError(f"None of the images in {data.train.root} could be read.",
                                    "Check the files: they must be PNG/JPEG/... images.")
                if tr.interrupted:
                    stopped_by = "interrupted"
                    last_path = models_dir / "last_model.pth"
                    save_checkpoint(last_path, model, meta, {**extras(epoch, tr, None),
                                                             "interrupted": True})
                    break
                va = T.run_epoch(model, val_loader, criterion, device,
                                 amp_dtype=precision.amp_dtype,
                                 channels_last=precision.channels_last)
                note_skipped("val", data.val, va.skipped)
                if scheduler is not None:
                    scheduler.step()
                log.add(T.EpochRow(epoch, lr, tr.loss, tr.accuracy, va.loss, va.accuracy,
                                   tr.images / max(tr.seconds, 1e-9), tr.seconds + va.seconds))
                mark = ""
                if best_acc is None or va.accuracy > best_acc:
                    best_acc, best_epoch, old = va.accuracy, epoch, best_path
                    best_path = models_dir / f"best_epoch{epoch}.pth"
                    save_checkpoint(best_path, model, meta, extras(epoch, tr, va))
                    if old is not None and old != best_path:
                        old.unlink(missing_ok=True)
                    mark = "  [green]best[/green]"
                info(f"epoch {epoch}/{settings.epochs}  lr {lr:.3g}  train loss {tr.loss:.4f} "
                     f"acc {tr.accuracy:.2%}  val loss {va.loss:.4f} acc {va.accuracy:.2%}  "
                     f"{tr.images / max(tr.seconds, 1e-9):.0f} img/s  "
                     f"{tr.seconds + va.seconds:.1f} s{mark}")
                if stopper is not None and stopper.step({"val_accuracy": va.accuracy,
                                                         "val_loss": va.loss}):
                    stopped_by = "early_stopping"
                    info(f"early stopping: {stopper.monitor} did not improve by more than "
                         f"{stopper.min_delta} for {stopper.patience} epochs")
                    break
                if epoch == settings.epochs or stop.is_set():
                    last_path = models_dir / "last_model.pth"
                    save_checkpoint(last_path, model, meta, extras(epoch, tr, va))
                    if stop.is_set():
                        stopped_by = "interrupted"
                        break
            if stopped_by == "early_stopping":
                last_path = models_dir / "last_model.pth"
                save_checkpoint(last_path, model, meta, extras(epoch, tr, va))
    except BaseException as exc:
        run_info.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                        skipped_files=[str(p) for s in skipped.values() for p in s])
        _write_run_json(run_dir, run_info)
        raise
    seconds = time.perf_counter() - started
    result = TrainResult(run_dir, best_path, last_path, best_epoch, best_acc,
                         len(log.rows), stopped_by, seconds,
                         [p for s in skipped.values() for p in s])
    run_info.update(status=stopped_by, epochs_run=result.epochs_run, best_epoch=best_epoch,
                    best_val_accuracy=best_acc, seconds=round(seconds, 2),
                    best_checkpoint=str(best_path) if best_path else None,
                    last_checkpoint=str(last_path) if last_path else None,
                    skipped_files=[str(p) for p in result.skipped_files],
                    skipped_count={k: len(v) for k, v in skipped.items()})
    _write_run_json(run_dir, run_info)
    return result


@contextlib.contextmanager
def _cudnn_autotune(device: str) -> Iterator[None]:
    """On CUDA, let cuDNN pick the fastest convolution for the fixed training input size;
    restored afterwards (inference in the same process keeps its own setting)."""
    import torch

    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or device.startswith("cuda")
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _write_run_json(run_dir: Path, data: dict[str, Any]) -> None:
    atomic_write_text(run_dir / "run.json",
                      json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")

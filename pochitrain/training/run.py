"""One training run from a config file: what ``pochi train`` does, and each trial of
``pochi optimize``.

Run folder layout::

    config.py               copy of the config file as given
    run.json                resolved settings, classes, preprocessing, versions, results
    models/best_epochN.pth  best validation accuracy so far (only the current best is kept)
    models/last_model.pth   the model after the last finished epoch, with the state that
                            ``pochi train --resume`` goes on from (training.resume)
    training_metrics.csv    one row per epoch, rewritten after every epoch
    loss.png, accuracy.png  curves, rewritten after every epoch
    visualization/          the original's training_metrics_<timestamp>.csv (percent) and
                            its _loss.png / _accuracy.png, for scripts written for it
"""

from __future__ import annotations

import contextlib
import functools
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pochitrain.config import Settings, load_config, preprocess_from_settings, resolve_device
from pochitrain.console import info, warn
from pochitrain.data import ImageFolder, check_classes, remap_labels, scan_image_folder
from pochitrain.errors import ConfigError, DataError
from pochitrain.meta import ModelMeta, file_sha256
from pochitrain.preprocess import Preprocess
from pochitrain.workspace import atomic_write_bytes, new_run_dir, write_run_json

if TYPE_CHECKING:
    from pochitrain.training.distributed import Distributed
    from pochitrain.training.epoch import EpochStats
    from pochitrain.training.fit import (
        CheckpointKeeper,
        EpochCallback,
        FitOutcome,
        FitSetup,
    )
    from pochitrain.training.metrics import MetricsLog
    from pochitrain.training.precision import Precision
    from pochitrain.training.resume import ResumePoint


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


def _check_data(settings: Settings, resumed: Path | None = None) -> _Data:
    """The two image folders (or the split of one, config val_split), checked."""
    keys = ("train_data_root",) if settings.val_split else ("train_data_root", "val_data_root")
    for key in keys:
        if getattr(settings, key) is None:
            raise ConfigError("config に必要なキーがありません\n"
                              f"{key} is not set in {settings.config_path}.",
                              f"Add {key} = 'path/to/folder' (one sub-folder of images per "
                              "class; a relative path is read from the working directory or the "
                              "config's folder).")
    settings.require_paths(*keys)
    train = scan_image_folder(settings.train_data_root or "", "training data folder "
                              "(train_data_root)", allow_unlabelled=False)
    if settings.val_split:
        from pochitrain.training.split import recorded_split, split_folder

        train, val = (recorded_split(resumed, train) if resumed is not None
                      else split_folder(train, settings.val_split, settings.seed))
    else:
        val = scan_image_folder(settings.val_data_root or "", "validation data folder "
                                "(val_data_root)", allow_unlabelled=False)
    if len(train.classes) < 2:
        raise DataError("学習データのクラスが 1 つしかありません\n"
                        f"The training data folder has only one class: {train.root}",
                        "A classifier needs at least two class sub-folders.")
    check_classes(val, train.classes, for_training=True)
    val = remap_labels(val, train.classes)
    n = len(train.classes)
    if settings.num_classes is not None and settings.num_classes != n:
        raise ConfigError(
            "num_classes がクラスフォルダの数と一致しません\n"
            f"num_classes = {settings.num_classes} but {train.root} has {n} class folders "
            f"({', '.join(train.classes)}).",
            f"Set num_classes = {n}, or remove it (None) to use the number of folders.")
    if isinstance(settings.class_weights, list) and len(settings.class_weights) != n:
        raise ConfigError(
            "class_weights の数がクラス数と一致しません\n"
            f"class_weights has {len(settings.class_weights)} values but there are {n} classes.",
            f"Give one weight per class, in this order: {', '.join(train.classes)}.")
    return _Data(train, val, list(train.classes))


def _preprocess(settings: Settings) -> Preprocess:
    pre = preprocess_from_settings(settings)
    if settings.input_size is not None and list(settings.input_size) != pre.input_size:
        raise ConfigError(
            "input_size が val_transform の出力サイズと一致しません\n"
            f"input_size = {settings.input_size} but val_transform produces {pre.input_size}.",
            "Make them agree (or remove input_size: it is read from val_transform).")
    return pre


def _versions() -> dict[str, str]:
    import torch
    import torchvision

    from pochitrain import __version__

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pochitrain": __version__,
            "platform": platform.platform()}


def _run_record(settings: Settings, config_path: Path, device: str, precision: Precision,
                data: _Data, pre: Preprocess) -> dict[str, Any]:
    """run.json as written when training starts; ``_finish_record`` adds the results."""
    from pochitrain.training.optim import class_weights

    n = len(data.class_names)
    return {
        "status": "running",
        "config_path": str(config_path),
        "settings": {**settings.to_dict(), "device_resolved": device,
                     "mixed_precision_resolved": precision.name,
                     "channels_last_resolved": precision.channels_last,
                     "num_classes": n, "input_size": pre.input_size},
        "class_names": data.class_names,
        "num_classes": n,
        "input_size": pre.input_size,
        "mean": pre.mean,
        "std": pre.std,
        "preprocess": pre.to_dict(),
        "class_weights_resolved": class_weights(settings.class_weights, data.train,
                                                data.class_names),
        "data": {"train_root": str(data.train.root), "val_root": str(data.val.root),
                 "train_images": len(data.train.samples), "val_images": len(data.val.samples)},
        "versions": _versions(),
        "skipped_files": [],
    }


def _finish_record(record: dict[str, Any], result: TrainResult,
                   skipped_by_split: dict[str, list[Path]]) -> dict[str, Any]:
    return {**record, "status": result.stopped_by, "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy,
            "seconds": round(result.seconds, 2),
            "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
            "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
            "skipped_files": [str(p) for p in result.skipped_files],
            "skipped_count": {k: len(v) for k, v in skipped_by_split.items()}}


def _setup(settings: Settings, data: _Data, device: str, pre: Preprocess) -> FitSetup:
    """Model, loaders, loss, optimizer, scheduler, early stopping: a ``training.FitSetup``."""
    import torch

    from pochitrain import training as T
    from pochitrain.models import build_model
    from pochitrain.training.data import val_batch_size

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
    loaders: Any = tuple(
        T.make_loader(folder, tf, shuffle=shuffle, batch_size=size,
                      num_workers=settings.num_workers, device=device, seed=settings.seed,
                      pin_memory=settings.train_pin_memory,
                      balanced=shuffle and settings.sampler == "balanced")
        for folder, tf, shuffle, size in (
            (data.train, train_tf, True, settings.batch_size),
            (data.val, val_tf, False, val_batch_size(settings.batch_size))))
    from pochitrain.training.gpu_loader import gpu_loaders

    gpu = gpu_loaders(settings, data.train, data.val, device, train_tf, val_tf)
    # decode + transforms on the GPU (config gpu_input), else the CPU DataLoaders
    train_loader, val_loader = gpu if gpu is not None else loaders
    from pochitrain.training.optim import class_weights, layer_param_groups

    weights = class_weights(settings.class_weights, data.train, data.class_names, say=True)
    weight = torch.tensor(weights, dtype=torch.float32, device=device) if weights else None

    params = (layer_param_groups(model, settings.model_name,
                                   settings.layer_wise_lr_config["layer_rates"],
                                   settings.learning_rate)
              if settings.enable_layer_wise_lr else model.parameters())
    optimizer = T.build_optimizer(settings.optimizer, params, settings.learning_rate,
                                  settings.weight_decay, settings.momentum)
    # after the optimizer, whose construction imports TorchDynamo (Python, holding the GIL)
    # unless the config's scheduler trial already did: nvJPEG's start-up, begun in the
    # background with the loaders, runs beside that import
    for loader in gpu or ():
        loader.warm_up()
    return T.FitSetup(
        model=model, train_loader=train_loader, val_loader=val_loader,
        criterion=torch.nn.CrossEntropyLoss(weight=weight), optimizer=optimizer,
        scheduler=T.build_scheduler(settings.scheduler, settings.scheduler_params, optimizer),
        stopper=T.EarlyStopping(**settings.early_stopping) if settings.early_stopping else None,
        precision=precision, device=device, epochs=settings.epochs,
        scaler=precision.grad_scaler(device), non_blocking=settings.gpu_non_blocking,
        input_size=list(pre.input_size))


def _epoch_extras(settings: Settings, epoch: int, tr: EpochStats,
                  va: EpochStats | None) -> dict[str, Any]:
    """What every checkpoint records beside the weights, for an epoch."""
    return {"epoch": epoch, "train_loss": tr.loss, "train_accuracy": tr.accuracy,
            "val_loss": va.loss if va else None, "val_accuracy": va.accuracy if va else None,
            "optimizer": settings.optimizer, "learning_rate": settings.learning_rate}


def _open_run(settings: Settings, config_path: Path, work_dir: Path | str | None,
              ddp: Distributed | None, resumed: ResumePoint | None = None) -> Path:
    """The new run folder with models/ and the config copy (other DDP ranks: a scratch
    folder nobody keeps); the run's own folder when resuming."""
    if ddp is not None and not ddp.is_main:
        run_dir = ddp.scratch_dir()
    elif resumed is not None:
        return resumed.run_dir
    else:
        run_dir = new_run_dir(Path(work_dir).resolve() if work_dir else settings.work_dir,
                              hint="--work-dir DIR, or work_dir in the config")
    (run_dir / "models").mkdir()
    atomic_write_bytes(run_dir / "config.py", config_path.read_bytes())
    return run_dir


def _run_fit(settings: Settings, setup: FitSetup, keeper: CheckpointKeeper, run_dir: Path,
             data: _Data, record: dict[str, Any], progress: bool,
             on_epoch: EpochCallback | None, ddp: Distributed | None) -> FitOutcome:
    """``training.fit`` with the run's observers (TensorBoard, gradient tracking) and metrics
    log; run.json says "failed" when it raises."""
    from pochitrain import training as T
    from pochitrain.plot_helper import PlotHelper
    from pochitrain.training.observers import build_observer

    main = ddp is None or ddp.is_main
    log: MetricsLog | None = None
    # on a GPU the cores are mostly idle: one imports matplotlib while the model trains, for
    # the last pictures (on the CPU the model's threads have every core)
    helps = main and settings.enable_metrics_export and setup.device.startswith("cuda")
    plotter = PlotHelper().start() if helps else None
    try:
        setup.observer = build_observer(settings, run_dir, data, setup.model) if main else None
        log = T.MetricsLog(run_dir, plots=main, enabled=settings.enable_metrics_export,
                           lr_log_scale=settings.layer_wise_lr_config["graph_config"]
                           ["use_log_scale"], base_lr=settings.learning_rate,
                           helper=plotter)
        with cudnn_autotune(setup.device, settings.cudnn_benchmark):
            out = T.fit(setup, keeper, log, functools.partial(_epoch_extras, settings),
                        progress and main, on_epoch)
        keeper.close()  # every file written: one that could not be fails the run
        log.close()
        return out
    except BaseException as exc:
        if log is not None:  # the pictures of the epochs that finished, if they can be drawn
            try:
                log.close()
            except Exception as draw_exc:  # noqa: BLE001 - the run's own error goes on
                warn(f"training plots not drawn ({type(draw_exc).__name__}: {draw_exc})")
        write_run_json(run_dir, {**record, "status": "failed",
                                 "error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        if plotter is not None:
            plotter.close()
        if setup.observer is not None:
            setup.observer.close()
        if ddp is not None:
            ddp.close(setup.model)


def _load_settings(config: Path | str | None, overrides: dict[str, Any] | None,
                   resume: Path | str | None) -> tuple[Settings, Path, ResumePoint | None]:
    """The config's settings, checked for training (and for the run being resumed)."""
    from pochitrain.training import distributed as D
    from pochitrain.training import resume as R

    resumed = R.find_resume_point(resume) if resume is not None else None
    if config is None and resumed is not None:
        config = resumed.config
    if config is None:
        raise ConfigError("config を指定してください\n"
                          "No config was given, and no run to resume.",
                          "Pass a training config file (pochi train -c CONFIG), or resume a run "
                          "(pochi train --resume RUN_DIR).")
    settings = load_config(config, overrides)
    config_path = Path(settings.config_path or config)
    if resumed is not None:
        R.check_same_config(resumed, config_path, settings.epochs)
    if settings.sampler is not None and D.env_world() is not None:
        raise ConfigError("sampler = 'balanced' は複数プロセスの学習では使えません\n"
                          "sampler = 'balanced' is not available with several training "
                          "processes (--gpus N / torchrun).",
                          "Train in one process, or use class_weights = 'balanced' instead.")
    return settings, config_path, resumed


def run_training(config: Path | str | None, *, overrides: dict[str, Any] | None = None,
                 work_dir: Path | str | None = None, progress: bool = True,
                 on_epoch: EpochCallback | None = None,
                 resume: Path | str | None = None) -> TrainResult:
    """Train from a config file; see the module docstring for what is written.

    ``overrides`` replace config keys (validated like the file); ``work_dir`` replaces the
    config's work_dir (relative to the current directory); ``on_epoch`` see ``training.fit``;
    ``resume`` a run folder (or its last_model.pth) to go on with (``training.resume``;
    ``config`` None: the run's own). Under torchrun / ``pochi train --gpus N`` every rank
    runs this; only rank 0 writes.
    """
    from pochitrain import training as T
    from pochitrain.checkpoint import checkpoint_payload, write_checkpoint
    from pochitrain.training import distributed as D
    from pochitrain.training import resume as R

    settings, config_path, resumed = _load_settings(config, overrides, resume)
    device = resolve_device(settings.device)
    ddp = D.init(device)  # one of several ranks (torchrun / --gpus N), else None
    device = ddp.device if ddp is not None else device
    main = ddp is None or ddp.is_main
    data = _check_data(settings, resumed.run_dir if resumed is not None else None)
    pre = _preprocess(settings)
    setup = _setup(settings, data, device, pre)
    if ddp is not None:
        ddp.prepare(setup, settings.batch_size, settings.seed)
    fingerprint = data.train.fingerprint()
    if resumed is not None:
        D.unwrap(setup.model).load_state_dict(resumed.payload["model_state_dict"])
        setup.resume = resumed.state
        R.warn_if_data_changed(resumed.payload, fingerprint)
    meta = ModelMeta(data.class_names, pre, model_name=settings.model_name,
                     source={"config_sha256": file_sha256(config_path),
                             "train_data_fingerprint": fingerprint})
    run_dir = _open_run(settings, config_path, work_dir, ddp, resumed)
    record = _run_record(settings, config_path, device, setup.precision, data, pre)
    record["settings"]["world_size"] = ddp.world if ddp is not None else 1
    if resumed is not None:
        record["resumed_after_epochs"] = [*resumed.record.get("resumed_after_epochs", []),
                                          resumed.epoch]
        info(f"resuming {run_dir} after epoch {resumed.epoch} of {settings.epochs}")
    write_run_json(run_dir, record)
    info(f"training {settings.model_name} on {device} (mixed precision {setup.precision.name}, "
         f"channels_last {'on' if setup.precision.channels_last else 'off'}): "
         f"{len(data.train.samples)} train / {len(data.val.samples)} val images, "
         f"{len(data.class_names)} classes -> {run_dir}")
    snapshot = functools.partial(checkpoint_payload, D.unwrap(setup.model), meta) if main else None
    started = time.perf_counter()
    with T.CheckpointKeeper(run_dir / "models", snapshot, write_checkpoint) as keeper:
        out = _run_fit(settings, setup, keeper, run_dir, data, record, progress, on_epoch, ddp)
    result = TrainResult(run_dir, keeper.best_path, keeper.last_path, keeper.best_epoch,
                         keeper.best_accuracy, out.epochs_run, out.stopped_by,
                         time.perf_counter() - started, out.skipped_files())
    write_run_json(run_dir, _finish_record(record, result, out.skipped))
    return result


def cudnn_autotune(device: str, wanted: bool | None = None
                   ) -> contextlib.AbstractContextManager[None]:
    """On CUDA, let cuDNN pick the fastest convolution for the fixed training input size
    (config cudnn_benchmark = True / False overrides); restored afterwards (inference in the
    same process keeps its own setting)."""
    import torch

    from pochitrain.training.epoch import cudnn_benchmark

    auto = torch.backends.cudnn.benchmark or device.startswith("cuda")
    return cudnn_benchmark(auto if wanted is None else wanted)

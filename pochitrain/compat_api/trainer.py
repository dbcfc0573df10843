"""The original's ``PochiTrainer``: a model, ``setup_training(...)``, then ``train(loaders)``.

``train`` runs ``training.fit``, the epoch loop of ``pochi train``: the run folder
(``work_dirs/YYYYMMDD_NNN``, made when the trainer is created, as the original did) gets
``models/best_epochN.pth``, ``models/last_model.pth`` and the metrics CSV and plots.
Accuracies returned or kept on the trainer are percentages, as in the original.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pochitrain.arguments import argument_error, count_argument, str_argument
from pochitrain.compat_api.data import (
    TrainingBatches,
    check_loader,
    flag_argument,
    loader_meta,
    num_classes_of,
    settings_of,
    weights_payload,
)
from pochitrain.config_checks import check_training_batch, is_number
from pochitrain.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader

    from pochitrain.config import Settings
    from pochitrain.training import EarlyStopping, EpochStats

# The original's fixed optimizer settings (its configs cannot change them).
ORIGINAL_WEIGHT_DECAY = {"SGD": 1e-4, "Adam": 0.0, "AdamW": 1e-2}
ORIGINAL_MOMENTUM = 0.9


class StopRequested(Exception):
    """Raised from the epoch callback when ``stop_flag_callback()`` asks to stop."""


def _check_setup(learning_rate: Any, optimizer_name: Any, class_weights: Any,
                 num_classes: Any, layer_wise_lr_config: Any,
                 early_stopping_config: Any) -> None:
    """``setup_training``'s argument types and values: a PochiError naming the argument."""
    if not is_number(learning_rate) or not learning_rate > 0:
        example = "0.001"
        if isinstance(learning_rate, str):
            try:
                example = learning_rate.strip() if float(learning_rate) > 0 else example
            except ValueError:
                pass
        raise argument_error("learning_rate", learning_rate, "a number > 0", example)
    str_argument("optimizer_name", optimizer_name, "'Adam'")
    if class_weights is not None and (not isinstance(class_weights, (list, tuple))
                                      or not all(is_number(w) for w in class_weights)):
        raise argument_error("class_weights", class_weights, "a list of numbers (one per "
                             "class) or None", "[1.0, 2.0, 1.0]")
    if num_classes is not None:
        count_argument("num_classes", num_classes, 2)
    for name, value in (("layer_wise_lr_config", layer_wise_lr_config),
                        ("early_stopping_config", early_stopping_config)):
        if value is not None and not isinstance(value, dict):
            raise argument_error(name, value, "a dict or None",
                                 "{'layer_rates': {...}}" if name.startswith("layer")
                                 else "{'enabled': True, 'patience': 5}")


class PochiTrainer:
    """``PochiTrainer(model_name, num_classes, device, pretrained, work_dir,
    create_workspace, cudnn_benchmark)``: the original's arguments. ``device`` may be left
    out ("auto": the GPU when there is one), as the original's README shows it."""

    def __init__(self, model_name: str, num_classes: int, device: str = "auto",
                 pretrained: bool = True, work_dir: str | Path = "work_dirs",
                 create_workspace: bool = True, cudnn_benchmark: bool = False) -> None:
        import torch

        from pochitrain.config import resolve_device
        from pochitrain.models import build_model
        from pochitrain.workspace import new_run_dir

        self.model_name = str_argument("model_name", model_name, "'resnet18'")
        self.num_classes = count_argument("num_classes", num_classes)
        device = str_argument("device", device, "'cpu' (or 'cuda', 'auto')")
        for name, value in (("pretrained", pretrained), ("create_workspace", create_workspace),
                            ("cudnn_benchmark", cudnn_benchmark)):
            flag_argument(name, value)
        self.device = torch.device(resolve_device(device))
        if isinstance(work_dir, bool) or not isinstance(work_dir, (str, os.PathLike)):
            raise argument_error("work_dir", work_dir, "a folder path (str or pathlib.Path)",
                                 "'work_dirs'")
        self.cudnn_benchmark = cudnn_benchmark and self.device.type == "cuda"
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        self.current_workspace: Path | None = None
        self.work_dir = Path(work_dir)
        if create_workspace:
            self.current_workspace = new_run_dir(work_dir, hint="work_dir")
            self.work_dir = self.current_workspace / "models"
            self.work_dir.mkdir()
        self.model = build_model(model_name, num_classes, pretrained).to(self.device)
        self.epoch = 0
        self.best_accuracy = 0.0  # percent
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.criterion: torch.nn.Module | None = None
        self.early_stopping: EarlyStopping | None = None
        self.enable_layer_wise_lr = False
        self.base_learning_rate = 0.0
        self.layer_wise_lr_config: dict[str, Any] = {}
        self.enable_metrics_export = True
        self.enable_gradient_tracking = False
        self.enable_tensorboard = False
        self.gradient_tracking_config: dict[str, Any] = {"record_frequency": 1}

    @classmethod
    def from_config(cls, config: Settings | str | Path,
                    create_workspace: bool = True) -> PochiTrainer:
        """From a config file (or its loaded ``Settings``)."""
        s = settings_of(config)
        return cls(s.model_name, num_classes_of(s), s.device, s.pretrained, str(s.work_dir),
                   create_workspace, bool(s.cudnn_benchmark))

    def setup_training(self, learning_rate: float = 0.001, optimizer_name: str = "Adam",
                       scheduler_name: str | None = None,
                       scheduler_params: dict[str, Any] | None = None,
                       class_weights: list[float] | None = None,
                       num_classes: int | None = None, enable_layer_wise_lr: bool = False,
                       layer_wise_lr_config: dict[str, Any] | None = None,
                       early_stopping_config: dict[str, Any] | None = None) -> None:
        """Optimizer (the original's fixed settings), scheduler, loss, early stopping."""
        import torch

        from pochitrain.config_checks import check_early_stopping
        from pochitrain.training import EarlyStopping, build_optimizer, build_scheduler
        from pochitrain.training.optim import layer_param_groups

        _check_setup(learning_rate, optimizer_name, class_weights, num_classes,
                     layer_wise_lr_config, early_stopping_config)
        n = num_classes or self.num_classes
        if class_weights is not None and len(class_weights) != n:
            raise UsageError(f"class_weights の数がクラス数と一致しません ({len(class_weights)} "
                             f"!= {n})。\nclass_weights has {len(class_weights)} values but "
                             f"there are {n} classes.", "Give one weight per class.")
        rates = (layer_wise_lr_config or {}).get("layer_rates") or {}
        if enable_layer_wise_lr and not rates:
            raise UsageError("層別学習率には layer_rates が必要です。\nenable_layer_wise_lr "
                             "needs layer_wise_lr_config={'layer_rates': {group: lr}}.")
        params = (layer_param_groups(self.model, self.model_name, rates, learning_rate)
                  if enable_layer_wise_lr else self.model.parameters())
        self.optimizer = build_optimizer(optimizer_name, params, learning_rate,
                                         ORIGINAL_WEIGHT_DECAY.get(optimizer_name, 0.0),
                                         ORIGINAL_MOMENTUM)
        self.scheduler = build_scheduler(scheduler_name, scheduler_params or {}, self.optimizer)
        weight = (torch.tensor(class_weights, dtype=torch.float32, device=self.device)
                  if class_weights else None)
        self.criterion = torch.nn.CrossEntropyLoss(weight=weight)
        self.enable_layer_wise_lr = enable_layer_wise_lr
        self.base_learning_rate = learning_rate
        self.layer_wise_lr_config = dict(layer_wise_lr_config or {})
        stop = check_early_stopping({"enabled": False, **(early_stopping_config or {})})
        self.early_stopping = EarlyStopping(**stop) if stop else None

    def _parts(self) -> tuple[torch.optim.Optimizer, torch.nn.Module]:
        if self.optimizer is None or self.criterion is None:
            raise UsageError("訓練コンポーネントが未設定です。train() の前に setup_training() を"
                             "呼び出してください。\nTraining is not set up.",
                             "Call setup_training() before train().")
        return self.optimizer, self.criterion

    def _pass(self, loader: DataLoader[Any],
              optimizer: torch.optim.Optimizer | None = None) -> EpochStats:
        from pochitrain.training import run_epoch

        batches: Any = TrainingBatches(loader, self.num_classes)  # run_epoch iterates it
        return run_epoch(self.model, batches, self._parts()[1], str(self.device),
                         optimizer=optimizer)

    def train_one_epoch(self, epoch: int, train_loader: DataLoader[Any]) -> dict[str, float]:
        """One training epoch: ``{"loss", "accuracy"}`` (accuracy in percent)."""
        check_loader("train_loader", train_loader)
        self.epoch = epoch
        stats = self._pass(train_loader, self._parts()[0])
        return {"loss": stats.loss, "accuracy": stats.accuracy * 100.0}

    def validate(self, val_loader: DataLoader[Any]) -> dict[str, float]:
        """``{"val_loss", "val_accuracy"}`` (accuracy in percent)."""
        check_loader("val_loader", val_loader)
        stats = self._pass(val_loader)
        return {"val_loss": stats.loss, "val_accuracy": stats.accuracy * 100.0}

    def train(self, train_loader: DataLoader[Any], val_loader: DataLoader[Any] | None = None,
              epochs: int = 10,
              stop_flag_callback: Callable[[], bool] | None = None) -> None:
        """Train ``epochs`` epochs. ``stop_flag_callback()`` returning True stops after the
        current epoch (the last checkpoint is written, as in the original)."""
        optimizer, criterion = self._parts()
        if val_loader is None:
            raise UsageError("val_loader が必要です。\nval_loader is required: the best "
                             "checkpoint is chosen by validation accuracy.",
                             "Pass a validation loader (create_data_loaders gives one).")
        check_loader("train_loader", train_loader)
        check_loader("val_loader", val_loader)
        epochs = count_argument("epochs", epochs)
        size = getattr(train_loader, "batch_size", None)
        if isinstance(size, int):
            check_training_batch(size, model_name=self.model_name)
        if self.enable_tensorboard or self.enable_gradient_tracking:
            from pochitrain.console import warn

            warn("PochiTrainer は TensorBoard と勾配トラッキングを記録しません / PochiTrainer "
                 "records no TensorBoard or gradient trace: use 'pochi train' with a config.")
        if stop_flag_callback is not None and stop_flag_callback():
            return
        self._fit(train_loader, val_loader, epochs, optimizer, criterion, stop_flag_callback)

    def _fit(self, train_loader: DataLoader[Any], val_loader: DataLoader[Any], epochs: int,
             optimizer: torch.optim.Optimizer, criterion: torch.nn.Module,
             stop_flag: Callable[[], bool] | None) -> None:
        from pochitrain import training as T
        from pochitrain.checkpoint import write_checkpoint

        meta = loader_meta(self.model_name, self.num_classes, train_loader, val_loader)
        keeper = T.CheckpointKeeper(self.work_dir, lambda extra: weights_payload(
            self.model, meta, extra), write_checkpoint)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        run_dir = self.current_workspace or self.work_dir
        log = T.MetricsLog(run_dir, enabled=self.enable_metrics_export
                           and self.current_workspace is not None,
                           base_lr=self.base_learning_rate if self.enable_layer_wise_lr else None)
        device = str(self.device)
        setup = T.FitSetup(
            model=self.model, train_loader=TrainingBatches(train_loader, self.num_classes),
            val_loader=TrainingBatches(val_loader, self.num_classes), criterion=criterion,
            optimizer=optimizer, scheduler=self.scheduler, stopper=self.early_stopping,
            precision=T.resolve_precision("off", False, device), device=device, epochs=epochs)

        def extras(epoch: int, tr: Any, va: Any) -> dict[str, Any]:
            self.epoch = epoch
            if va is not None:
                self.best_accuracy = max(self.best_accuracy, va.accuracy * 100.0)
            out = {"epoch": epoch, "best_accuracy": self.best_accuracy,
                   "optimizer_state_dict": optimizer.state_dict()}
            if self.scheduler is not None:
                out["scheduler_state_dict"] = self.scheduler.state_dict()
            return out

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            if stop_flag is not None and stop_flag():
                raise StopRequested

        with keeper:
            try:
                T.fit(setup, keeper, log, extras, progress=False, on_epoch=on_epoch)
            except StopRequested:
                keeper.save_last(extras(self.epoch, None, None))
            finally:
                log.close()

    def get_base_learning_rate(self) -> float:
        """The base learning rate (the configured one under layer-wise rates)."""
        if self.enable_layer_wise_lr or self.optimizer is None:
            return self.base_learning_rate
        return float(self.optimizer.param_groups[0]["lr"])

    def is_layer_wise_lr_enabled(self) -> bool:
        return self.enable_layer_wise_lr

    def get_layer_wise_learning_rates(self) -> dict[str, float]:
        """Current learning rate of each layer group (layer-wise learning rates only)."""
        if not self.enable_layer_wise_lr or self.optimizer is None:
            return {}
        return {str(g.get("name", i)): float(g["lr"])
                for i, g in enumerate(self.optimizer.param_groups)}

"""Optimizers (with the original's layer-wise learning rates), per-epoch LR schedulers and
early stopping."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import torch

from pochitrain.config_legacy import LAYER_GROUPS
from pochitrain.console import info
from pochitrain.errors import ConfigError

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler
    from torch.optim.optimizer import ParamsT

    from pochitrain.data import ImageFolder


def build_optimizer(name: str, params: ParamsT, lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "Adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "AdamW":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError("不明なオプティマイザーです\n"
                      f"Unknown optimizer {name!r}.", "Use SGD, Adam or AdamW.")


def layer_group(name: str) -> str:
    """The original's ResNetLayerGrouper: the first of layer1..layer4, conv1, bn1, fc found in
    the parameter name (substring), else "other"."""
    return next((g for g in LAYER_GROUPS[:-1] if g in name), "other")


def layer_param_groups(model: torch.nn.Module, model_name: str, rates: dict[str, float],
                       base_lr: float) -> list[dict[str, Any]]:
    """Parameter groups named by ``layer_group``; groups missing from ``rates`` get
    ``base_lr``. A rate for a group that holds no parameter of this model is a ConfigError."""
    groups: dict[str, list[torch.nn.Parameter]] = {g: [] for g in LAYER_GROUPS}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[layer_group(name)].append(param)
    present = [g for g, params in groups.items() if params]
    empty = [g for g in rates if g not in present]
    if empty:
        raise ConfigError(
            "layer_rates のグループに該当するパラメータがありません\n"
            f"layer_wise_lr_config['layer_rates'] names {', '.join(repr(g) for g in empty)}, "
            f"which match(es) no parameter of {model_name}.",
            f"Groups of {model_name}: {', '.join(present)}. Remove the others, or use a ResNet "
            "(the original's layer grouping is made for ResNet layer names).")
    return [{"params": groups[g], "lr": rates.get(g, base_lr), "name": g} for g in present]


def build_scheduler(name: str | None, params: dict[str, Any],
                    optimizer: torch.optim.Optimizer) -> LRScheduler | None:
    """A per-epoch LR scheduler (stepped once after each epoch), or None."""
    if name is None:
        return None
    cls = getattr(torch.optim.lr_scheduler, name)
    try:
        return cls(optimizer, **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError("scheduler が scheduler_params を受け付けませんでした\n"
                          f"scheduler {name} rejected scheduler_params {params!r}: {exc}",
                          "Fix scheduler_params in the config (see torch.optim.lr_scheduler)."
                          ) from exc


def class_weights(setting: list[float] | str | None, train: ImageFolder, names: list[str],
                  say: bool = False) -> list[float] | None:
    """The loss's class weights: the config's list, or computed for "balanced"."""
    if setting != "balanced":
        return setting if isinstance(setting, list) else None
    weights = balanced_class_weights([label for _, label in train.samples], len(names))
    if say:
        info("class_weights = 'balanced': " + ", ".join(
            f"{name} {w:.3g}" for name, w in zip(names, weights)))
    return weights


def balanced_class_weights(labels: list[int], n_classes: int) -> list[float]:
    """``class_weights = "balanced"``: images / (classes x images of the class), the rule of
    scikit-learn's ``compute_class_weight("balanced")``; a class without images gets 0."""
    counts = Counter(labels)
    return [len(labels) / (n_classes * counts[k]) if counts[k] else 0.0
            for k in range(n_classes)]


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

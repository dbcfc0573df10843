"""Optimizers, per-epoch LR schedulers and early stopping."""

from __future__ import annotations

from typing import Any

import torch

from pochitrain.errors import ConfigError


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

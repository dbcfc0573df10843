"""Gradient tracking (config ``enable_gradient_tracking``): per-layer gradient norms to a CSV.

CSV ``gradient_trace.csv`` in the run folder, the original pochitrain's layout: a column
``epoch`` then one column per layer (or per block). Differences on purpose: the original
stored the norm of the *last batch* of an epoch; here each parameter's L2 gradient norm is
averaged over all batches of the epoch. ``gradient_tracking_config``:

- ``record_frequency``: record epochs whose number is a multiple of it (1: every epoch);
- ``exclude_patterns``: regular expressions; matching parameter names are skipped;
- ``group_by_block``: parameters of ``layer1`` .. ``layer4`` are combined per block;
- ``aggregation_method``: how a block's parameter norms are combined: median, mean, max, rms.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from pochitrain.training.metrics import write_rows

_BLOCK = re.compile(r"^(?:module\.)?(?:model\.)?(layer[1-4])\.")


AGGREGATE: dict[str, Callable[[list[float]], float]] = {
    "median": statistics.median, "mean": lambda v: sum(v) / len(v), "max": max,
    "rms": lambda v: (sum(x * x for x in v) / len(v)) ** 0.5}


class GradientTracker:
    def __init__(self, model: torch.nn.Module, csv_path: Path, *, record_frequency: int = 1,
                 exclude_patterns: list[str] | None = None, group_by_block: bool = True,
                 aggregation_method: str = "median") -> None:
        self.csv_path = csv_path
        self.frequency = record_frequency
        self.aggregate = AGGREGATE[aggregation_method]
        patterns = [re.compile(p) for p in exclude_patterns or []]
        self.params: list[torch.nn.Parameter] = []
        self.groups: dict[str, list[int]] = {}  # column -> indices into params
        for name, param in model.named_parameters():
            clean = re.sub(r"^module\.", "", name)
            if param.requires_grad and not any(p.search(clean) for p in patterns):
                match = _BLOCK.match(clean) if group_by_block else None
                self.groups.setdefault(match.group(1) if match else clean, []).append(
                    len(self.params))
                self.params.append(param)
        self.epoch = 1
        self._sum: torch.Tensor | None = None
        self._batches = 0
        self.rows: list[list[float]] = []  # [epoch, value per group]

    def _recording(self) -> bool:
        return self.epoch % self.frequency == 0

    def after_backward(self) -> None:
        """Add this batch's per-parameter gradient norms (on the device, no sync)."""
        if not self._recording() or not self.params:
            return
        norms = torch.stack([p.grad.detach().float().norm() if p.grad is not None
                             else torch.zeros((), device=p.device) for p in self.params])
        self._sum = norms if self._sum is None else self._sum + norms
        self._batches += 1

    def epoch_end(self, epoch: int) -> None:
        self.epoch = epoch
        if self._recording() and self._sum is not None and self._batches:
            mean = (self._sum / self._batches).cpu().tolist()
            self.rows.append([epoch] + [self.aggregate([mean[i] for i in idx])
                                        for idx in self.groups.values()])
            write_rows(self.csv_path, ["epoch", *self.groups],
                       ([int(row[0])] + [f"{v:.8g}" for v in row[1:]] for row in self.rows))
        self._sum, self._batches = None, 0
        self.epoch = epoch + 1


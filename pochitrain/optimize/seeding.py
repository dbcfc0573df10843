"""A seeded sampler that several processes can share a study with.

Two ``pochi optimize`` processes on one study, each with ``TPESampler(seed=0)``, would draw
the same values: both samplers start from the same random state. ``SeedPerTrial`` builds the
sampler afresh before each trial with ``seed + trial.number``. Trial numbers are unique in a
study, so every worker draws its own values, and one process given the same seed still
replays the same study.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from optuna.samplers import BaseSampler


class SeedPerTrial(BaseSampler):
    """Delegates to ``make(seed + trial.number)``, built in ``before_trial``."""

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self.make, self.seed = make, seed
        self.sampler = make(seed)

    def before_trial(self, study: Any, trial: Any) -> None:
        self.sampler = self.make(self.seed + trial.number)
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str,
                           param_distribution: Any) -> Any:
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Any, trial: Any, state: Any,
                    values: Sequence[float] | None) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()

"""``pochi train --resume RUN_DIR``: go on with an interrupted run in its own folder.

After every finished epoch ``models/last_model.pth`` holds, beside the weights, the state the
next epoch starts from (``resume`` key): optimizer, scheduler, AMP scaler, early-stopping
counter, best checkpoint, the random states (Python, NumPy, torch, CUDA, the loaders' own
generators and the DDP sampler's epoch) and the metric rows. A resumed run restores all of it
and starts at the next epoch, so with a seed and ``num_workers = 0`` it ends with the same
weights as a run that was never interrupted. With loader worker processes, the random
augmentation drawn in the workers restarts from the seed (their generators live in processes
that ended with the run).

A Ctrl+C inside an epoch leaves ``last_model.pth`` at the last finished epoch: the partial
epoch is not resumable (before the first finished epoch the file holds the weights at the
moment of Ctrl+C, without ``resume``).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pochitrain.console import warn
from pochitrain.meta import file_sha256
from pochitrain.run_to_resume import refuse, run_config, run_to_resume
from pochitrain.training.metrics import EpochRow, MetricsLog

# ``s`` below is a ``training.fit.FitSetup`` and ``keeper`` its ``CheckpointKeeper``: fit calls
# this module, so naming them here would make an import circle.

RESUME_KEY = "resume"


@dataclass
class ResumePoint:
    """An interrupted run, checked: its folder, run.json and checkpoint (its saved state)."""

    run_dir: Path
    record: dict[str, Any]
    payload: dict[str, Any]  # the checkpoint dict (weights, metadata, ``resume``)

    @property
    def state(self) -> dict[str, Any]:
        return self.payload[RESUME_KEY]

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    @property
    def config(self) -> Path:
        """The config the run was started with (``run_to_resume.run_config``)."""
        return run_config(self.run_dir, self.record)


def find_resume_point(path: Path | str) -> ResumePoint:
    """``RUN_DIR`` or ``RUN_DIR/models/last_model.pth``, checked for resuming."""
    from pochitrain.checkpoint import read_checkpoint

    run = run_to_resume(path)
    payload, _ = read_checkpoint(run.checkpoint)
    if RESUME_KEY not in payload:
        raise refuse("再開できる状態が保存されていません",
                     f"--resume {path}: {run.checkpoint} holds no finished epoch to resume "
                     "from (the run stopped during its first epoch).",
                     "Start the run again with 'pochi train -c CONFIG'.")
    return ResumePoint(run.run_dir, run.record, payload)


def check_same_config(point: ResumePoint, config: Path, settings_epochs: int) -> None:
    """The config given with --resume must be the run's own; the run must have epochs left."""
    started_with = point.payload.get("meta", {}).get("source", {}).get("config_sha256")
    if started_with is not None and file_sha256(config) != started_with:
        raise refuse("別の config の学習は再開できません",
                     f"--resume {point.run_dir}: {config} is not the config this run was "
                     "started with (its content differs).",
                     "Leave -c out (the run's own config is used), or start a new run with "
                     "this config.")
    if settings_epochs <= point.epoch:
        raise refuse("再開後に学習するエポックがありません",
                     f"--resume {point.run_dir}: {point.epoch} epoch(s) are done and epochs "
                     f"= {settings_epochs}.",
                     f"Pass --epochs with more than {point.epoch}.")


def capture(s: Any, keeper: Any, log: MetricsLog, epoch: int) -> dict[str, Any]:
    """The state after finished epoch ``epoch``, for ``last_model.pth``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "epoch": epoch,
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict() if s.scheduler is not None else None,
        "scaler": s.scaler.state_dict() if s.scaler is not None else None,
        "stopper": ({"best": s.stopper.best, "bad_epochs": s.stopper.bad_epochs}
                    if s.stopper is not None else None),
        "best": {"name": keeper.best_path.name if keeper.best_path else None,
                 "epoch": keeper.best_epoch, "accuracy": keeper.best_accuracy},
        "rng": {"python": random.getstate(),
                "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos,
                          has_gauss, gauss),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
                "loaders": [_loader_state(loader) for loader in (s.train_loader, s.val_loader)]},
        "metrics_rows": [asdict(row) for row in log.rows],
        "gradient_rows": (s.observer.gradients.rows
                          if s.observer is not None and s.observer.gradients is not None else []),
    }


def _loader_state(loader: Any) -> dict[str, Any]:
    generator = getattr(loader, "generator", None)
    epoch = getattr(getattr(loader, "sampler", None), "epoch", None)
    return {"generator": generator.get_state() if isinstance(generator, torch.Generator)
            else None, "sampler_epoch": epoch if isinstance(epoch, int) else None}


def restore(s: Any, keeper: Any, log: MetricsLog, state: dict[str, Any]) -> int:
    """Put the saved state back (the weights are loaded by the caller); the first epoch to
    run."""
    s.optimizer.load_state_dict(state["optimizer"])
    if s.scheduler is not None and state["scheduler"] is not None:
        s.scheduler.load_state_dict(state["scheduler"])
    if s.scaler is not None and state["scaler"] is not None:
        s.scaler.load_state_dict(state["scaler"])
    if s.stopper is not None and state["stopper"] is not None:
        s.stopper.best, s.stopper.bad_epochs = (state["stopper"]["best"],
                                                state["stopper"]["bad_epochs"])
    best = state["best"]
    if best["name"] is not None and (keeper.models_dir / best["name"]).is_file():
        keeper.best_path = keeper.models_dir / best["name"]
        keeper.best_epoch, keeper.best_accuracy = best["epoch"], best["accuracy"]
    keeper.last_path = keeper.models_dir / "last_model.pth"
    log.rows[:] = [EpochRow(**row) for row in state["metrics_rows"]]
    if s.observer is not None and s.observer.gradients is not None:
        s.observer.gradients.rows[:] = [list(row) for row in state["gradient_rows"]]
        s.observer.gradients.epoch = state["epoch"] + 1
    rng = state["rng"]
    random.setstate(rng["python"])
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    for loader, saved in zip((s.train_loader, s.val_loader), rng["loaders"]):
        _restore_loader(loader, saved)
    return int(state["epoch"]) + 1


def _restore_loader(loader: Any, saved: dict[str, Any]) -> None:
    generator = getattr(loader, "generator", None)
    if saved["generator"] is not None and isinstance(generator, torch.Generator):
        generator.set_state(saved["generator"])
    sampler = getattr(loader, "sampler", None)
    if saved["sampler_epoch"] is not None and sampler is not None and hasattr(sampler, "epoch"):
        sampler.epoch = saved["sampler_epoch"]


def warn_if_data_changed(payload: dict[str, Any], fingerprint: str) -> None:
    """A resumed run whose training images changed (added, removed, edited) goes on, but it
    is no longer the run it would have been: say so."""
    source = (payload.get("meta") or {}).get("source") or {}
    before = source.get("train_data_fingerprint")
    if before and before != fingerprint:
        warn("学習データが中断前から変わっています / The training images changed since the "
             "run was interrupted (files added, removed or edited): it goes on with the "
             "current ones.")

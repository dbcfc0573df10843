"""Which run ``pochi train --resume RUN`` goes on with, checked from its files alone (no torch):
a mistyped or finished run is told before training's imports. ``training.resume`` reads the
checkpoint and restores the state."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from pochitrain.errors import UsageError
from pochitrain.meta import file_sha256
from pochitrain.workspace import read_run_json

FINISHED = ("completed", "early_stopping")


class RunToResume(NamedTuple):
    run_dir: Path
    checkpoint: Path  # models/last_model.pth
    record: dict[str, Any]  # run.json


def refuse(ja: str, en: str, fix: str) -> UsageError:
    return UsageError(f"{ja}\n{en}", fix)


def run_to_resume(path: Path | str) -> RunToResume:
    """``RUN_DIR`` or ``RUN_DIR/models/last_model.pth``: a run with a last checkpoint and a
    run.json that did not finish; else the UsageError that says why not."""
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent.parent  # RUN_DIR/models/last_model.pth
    checkpoint = path / "models" / "last_model.pth" if path.is_dir() else path
    record = read_run_json(run_dir) if checkpoint.is_file() else None
    if record is None:
        missing = (f"{path} does not exist" if not path.exists() else
                   f"{checkpoint} is missing" if not checkpoint.is_file() else
                   f"{run_dir / 'run.json'} is missing or unreadable")
        raise refuse("再開する学習が見つかりません",
                     f"--resume {path}: no run to resume there ({missing}).",
                     "Pass a run folder written by 'pochi train' (work_dirs/YYYYMMDD_NNN) or "
                     "its models/last_model.pth.")
    if record.get("status") in FINISHED:
        raise refuse("この学習は最後まで終わっています",
                     f"--resume {path}: the run finished ({record['status']}, "
                     f"{record.get('epochs_run')} epoch(s)); there is nothing to resume.",
                     "Start a new run with 'pochi train -c CONFIG' (e.g. with more epochs).")
    return RunToResume(run_dir, checkpoint, record)


def run_config(run_dir: Path, record: dict[str, Any]) -> Path:
    """The config a run was started with (``record``: its run.json) where it still has the
    same content, else the copy in the run folder."""
    recorded = Path(record.get("config_path") or "")
    copy = run_dir / "config.py"
    if recorded.is_file() and copy.is_file() and file_sha256(recorded) == file_sha256(copy):
        return recorded
    return copy

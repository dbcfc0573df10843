"""Run folders (``work_dirs/YYYYMMDD_NNN``) and atomic file writes.

Everything pochitrain knows about a run folder lives here::

    work_dirs/YYYYMMDD_NNN/
        config.py     copy of the training config (its relative paths mean the original's)
        run.json      what the run resolved and produced (config_path: the original config)
        models/       checkpoints, and the ONNX / engines exported from them
        inference_results/YYYYMMDD_NNN/   one folder per inference run
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pochitrain.errors import OutputExistsError, PochiError

RUN_DIR_PATTERN = re.compile(r"^\d{8}_\d{3,}$")
RUN_JSON = "run.json"
CONFIG_COPY = "config.py"


def is_run_dir(path: Path) -> bool:
    return bool(RUN_DIR_PATTERN.match(path.name))


def run_folder_of(model_path: Path | str) -> Path:
    """work_dirs/X/models/best.pth -> work_dirs/X; anything else -> the model's folder."""
    parent = Path(model_path).resolve().parent
    return parent.parent if parent.name == "models" else parent


def find_config_near(model_path: Path | str) -> Path | None:
    """``config.py`` in the model's folder or its parents, up to the run folder (YYYYMMDD_NNN).

    work_dirs/20260101_001/models/best_epoch3.pth -> work_dirs/20260101_001/config.py.
    Without a run folder above, only the model's folder and its parent are searched.
    """
    folder = Path(model_path).expanduser().resolve().parent
    chain = [folder, *folder.parents]
    run_idx = next((i for i, p in enumerate(chain) if is_run_dir(p)), None)
    limit = run_idx if run_idx is not None and run_idx <= 3 else 1
    for candidate in (p / CONFIG_COPY for p in chain[:limit + 1]):
        if candidate.is_file():
            return candidate
    return None


def read_run_json(folder: Path | str) -> dict[str, Any] | None:
    """``folder/run.json`` as a dict; None when absent or unreadable (it is a record, not an
    input anyone must provide)."""
    path = Path(folder) / RUN_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_run_json(run_dir: Path, data: dict[str, Any]) -> None:
    atomic_write_text(run_dir / RUN_JSON,
                      json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def config_paths_base(config_path: Path) -> Path:
    """The folder that relative paths in ``config_path`` are relative to.

    The copy of a config that ``pochi train`` keeps in its run folder still means the paths of
    the original: run.json beside the copy records where that was.
    """
    original = (read_run_json(config_path.parent) or {}).get("config_path")
    if original and Path(original).resolve() != config_path.resolve():
        return Path(original).resolve().parent
    return config_path.parent


def recorded_path(config_path: Path, key: str, value: str) -> Path | None:
    """The absolute ``key`` that run.json beside a run's config copy recorded for the relative
    ``value`` (same trailing parts), when it still exists: a run trained from another working
    directory stays usable from anywhere."""
    settings = (read_run_json(config_path.parent) or {}).get("settings")
    recorded = settings.get(key) if isinstance(settings, dict) else None
    if not isinstance(recorded, str) or not recorded:
        return None
    path, tail = Path(recorded), Path(value).parts
    if path.is_absolute() and tail and path.parts[-len(tail):] == tail and path.exists():
        return path
    return None


def local_now() -> _dt.datetime:
    """The current local time with its UTC offset (the machine's zone, never a fixed one)."""
    return _dt.datetime.now().astimezone()


def new_run_dir(base: Path | str, today: _dt.date | None = None,
                hint: str = "--output DIR") -> Path:
    """Create and return ``base/YYYYMMDD_NNN`` with the next free NNN (never reuses one).

    ``hint``: the option that chooses ``base`` (named in the error when it is unusable).
    """
    base = Path(base)
    stamp = (today or _dt.date.today()).strftime("%Y%m%d")
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PochiError(
            "出力フォルダを作成できません\n"
            f"Cannot create output folder {base}: {exc.strerror}",
            f"Choose a writable location ({hint}).",
        ) from exc
    taken = [p.name for p in base.glob(f"{stamp}_*") if p.name[9:].isdigit()]
    n = max((int(name[9:]) for name in taken), default=0) + 1
    while True:
        path = base / f"{stamp}_{n:03d}"
        try:
            path.mkdir()  # exclusive: two runs started together still get distinct folders
            return path
        except FileExistsError:
            n += 1
        except OSError as exc:
            raise PochiError(
                "出力フォルダを作成できません\n"
                f"Cannot create output folder {path}: {exc.strerror}",
                "Choose a writable location.",
            ) from exc


def check_writable(path: Path, overwrite: bool = False, what: str = "Output file") -> None:
    """Refuse to clobber ``path`` unless asked; check its folder exists and is writable."""
    if path.exists() and not overwrite:
        raise OutputExistsError(
            "出力先がすでに存在します\n"
            f"{what} already exists: {path}",
            "Pass --overwrite to replace it, or --output to write elsewhere.",
        )
    parent = path.parent
    if not parent.is_dir():
        raise PochiError("出力フォルダが存在しません\n"
                         f"Output folder does not exist: {parent}", "Create it or choose another.")
    if not os.access(parent, os.W_OK):
        raise PochiError("出力フォルダに書き込めません\n"
                         f"Output folder is not writable: {parent}", "Choose a writable location.")


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A failure (or Ctrl+C) removes the temp file, so no half-written file is ever left under the
    final name.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600; give the file the mode a plain open() would have
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")

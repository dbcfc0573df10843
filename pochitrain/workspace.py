"""Run folders (``work_dirs/YYYYMMDD_NNN``) and atomic file writes."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pochitrain.errors import OutputExistsError, PochiError


def new_run_dir(base: Path | str, today: _dt.date | None = None) -> Path:
    """Create and return ``base/YYYYMMDD_NNN`` with the next free NNN (never reuses one)."""
    base = Path(base)
    stamp = (today or _dt.date.today()).strftime("%Y%m%d")
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PochiError(
            f"Cannot create output folder {base}: {exc.strerror}",
            "Choose a writable location (e.g. --output DIR or work_dir in the config).",
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
                f"Cannot create output folder {path}: {exc.strerror}",
                "Choose a writable location.",
            ) from exc


def check_writable(path: Path, overwrite: bool = False, what: str = "Output file") -> None:
    """Refuse to clobber ``path`` unless asked; check its folder exists and is writable."""
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{what} already exists: {path}",
            "Pass --overwrite to replace it, or --output to write elsewhere.",
        )
    parent = path.parent
    if not parent.is_dir():
        raise PochiError(f"Output folder does not exist: {parent}", "Create it or choose another.")
    if not os.access(parent, os.W_OK):
        raise PochiError(f"Output folder is not writable: {parent}", "Choose a writable location.")


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

"""Temporary folders named with their owner's pid: a process that is killed cannot remove its
own, so the next start removes those whose owner is gone (DDP ranks' scratch folders, the
metrics folder of ``pochi serve --workers``)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_orphans(pattern: str, root: Path | str | None = None) -> list[Path]:
    """Remove this user's folders in ``root`` (default: the temp folder) whose name matches
    the regular expression ``pattern`` (whole name; its first group is the owner's pid) and
    whose owner is gone; the folders removed."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).iterdir():
        match = re.fullmatch(pattern, folder.name)
        with contextlib.suppress(OSError):
            if (match and int(match.group(1)) != os.getpid() and folder.is_dir()
                    and folder.stat().st_uid == os.getuid()
                    and not pid_alive(int(match.group(1)))):
                shutil.rmtree(folder)
                removed.append(folder)
    return removed

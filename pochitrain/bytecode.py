"""Keep compiled bytecode between commands where Python would not.

Python caches each module's compiled bytecode in ``__pycache__`` beside its source (pip
writes it at install time). Where there is none and Python may not write it
(``PYTHONDONTWRITEBYTECODE=1``, common in container images, or a read-only site-packages),
every command compiles PyTorch's modules from source again, on every run (a large part of a
short command: docs/benchmarks.md).

Only there (judged by torch's ``__init__``), a command keeps the bytecode in a cache folder of
its own instead (``$XDG_CACHE_HOME/pochitrain/pycache``, else ``~/.cache/pochitrain/pycache``;
Python's ``sys.pycache_prefix``, also passed to child processes as ``PYTHONPYCACHEPREFIX``).
Nothing is written beside the sources. Where bytecode exists beside the sources it is used as
always: a prefix would make Python ignore it. ``POCHI_BYTECODE_CACHE=0`` turns this off; an explicit
``PYTHONPYCACHEPREFIX`` is left as it is.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ENV = "POCHI_BYTECODE_CACHE"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pochitrain" / "pycache"


def _recompiles_torch() -> bool:
    """Whether importing torch would compile it from source: no bytecode beside its
    ``__init__.py`` (a fresh, never-imported install) and Python may not or cannot write it
    there. False when torch is absent (nothing to gain)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return False
    if Path(importlib.util.cache_from_source(spec.origin)).is_file():
        return False  # cached beside the sources (pip compiles at install): keep using it
    folder = Path(spec.origin).parent
    cache = folder / "__pycache__"
    return sys.dont_write_bytecode or not os.access(cache if cache.is_dir() else folder,
                                                    os.W_OK)


def _file_size_limited() -> bool:
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return False
    return resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY


def keep_bytecode() -> Path | None:
    """Point Python's bytecode cache at :func:`cache_dir` when it would otherwise compile the
    heavy packages on every run; the folder used, or None when nothing changed.

    Under a file-size limit (``ulimit -f``) no bytecode is written at all: Python writes a
    ``.pyc`` with one unchecked write, so the limit would leave a truncated one that breaks
    every later import of its module."""
    if _file_size_limited():
        sys.dont_write_bytecode = True
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"  # the command's child processes too
        return None
    if os.environ.get(ENV, "").strip() == "0" or sys.pycache_prefix is not None:
        return None
    if not _recompiles_torch():
        return None
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    sys.pycache_prefix = str(folder)
    sys.dont_write_bytecode = False
    os.environ["PYTHONPYCACHEPREFIX"] = str(folder)  # spawned workers read it too
    return folder

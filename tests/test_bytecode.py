"""bytecode.keep_bytecode: where Python may not write __pycache__ (PYTHONDONTWRITEBYTECODE),
a command keeps the bytecode in its own cache folder; opt-out and explicit settings win."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _pochi(tmp_path: Path, **env: str) -> Path:
    cache = tmp_path / "xdg"
    full = {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")}
    full.update(XDG_CACHE_HOME=str(cache), **env)
    done = subprocess.run([sys.executable, "-m", "pochitrain.cli.main", "sample-data", "--help"],
                          capture_output=True, text=True, timeout=60, env=full, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return cache / "pochitrain" / "pycache"


def test_no_bytecode_beside_the_sources_means_a_cache_of_our_own(tmp_path: Path) -> None:
    folder = _pochi(tmp_path, PYTHONDONTWRITEBYTECODE="1")
    names = {p.name.split(".")[0] for p in folder.rglob("*.pyc")}
    assert "sample_data" in names  # the verb module, imported after the switch


def test_left_alone_when_python_caches_or_the_user_says_no(tmp_path: Path) -> None:
    assert not _pochi(tmp_path / "a", PYTHONDONTWRITEBYTECODE="1",
                      POCHI_BYTECODE_CACHE="0").exists()
    own = tmp_path / "own"
    assert not _pochi(tmp_path / "b", PYTHONDONTWRITEBYTECODE="1",
                      PYTHONPYCACHEPREFIX=str(own)).exists()
    if os.access(Path(__import__("torch").__file__).parent, os.W_OK):  # a writable venv
        assert not _pochi(tmp_path / "c").exists()

"""bytecode.keep_bytecode: where torch has no cached bytecode and Python may not write it
(PYTHONDONTWRITEBYTECODE), a command keeps bytecode in its own cache folder; where bytecode is
cached beside the sources (pip compiles at install), nothing changes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _pochi(tmp_path: Path, pythonpath: Path | None = None, **env: str) -> Path:
    cache = tmp_path / "xdg"
    full = {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")}
    full.update(XDG_CACHE_HOME=str(cache), **env)
    if pythonpath is not None:
        full["PYTHONPATH"] = os.pathsep.join([str(pythonpath), full.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "pochitrain.cli.main", "sample-data", "--help"],
                          capture_output=True, text=True, timeout=300, env=full, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return cache / "pochitrain" / "pycache"


def _uncompiled_torch(tmp_path: Path) -> Path:
    """A stand-in ``torch`` package first on the path, never compiled (as on an image whose
    packages carry no bytecode); ``sample-data --help`` does not import it."""
    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("raise ImportError('not for import')\n")
    return site


def test_uncompiled_torch_and_no_writing_means_a_cache_of_our_own(tmp_path: Path) -> None:
    folder = _pochi(tmp_path, _uncompiled_torch(tmp_path), PYTHONDONTWRITEBYTECODE="1")
    names = {p.name.split(".")[0] for p in folder.rglob("*.pyc")}
    assert "sample_data" in names  # the verb module, imported after the switch


def test_left_alone_when_bytecode_is_cached_or_the_user_says_no(tmp_path: Path) -> None:
    # the real torch, compiled at install: a prefix would make Python ignore that bytecode
    assert not _pochi(tmp_path / "a", PYTHONDONTWRITEBYTECODE="1").exists()
    site = _uncompiled_torch(tmp_path)
    assert not _pochi(tmp_path / "b", site, PYTHONDONTWRITEBYTECODE="1",
                      POCHI_BYTECODE_CACHE="0").exists()
    assert not _pochi(tmp_path / "c", site, PYTHONDONTWRITEBYTECODE="1",
                      PYTHONPYCACHEPREFIX=str(tmp_path / "own")).exists()

"""The package stays valid Python 3.10, the Python of JetPack 6 (see the README's Jetson
section). mypy checks the standard library and typing names against 3.10 (test_types.py); this
module checks the grammar: with a real Python 3.10 interpreter where one is installed, and with
``ast``'s 3.10 feature check everywhere."""

from __future__ import annotations

import ast
import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pochitrain"
COMPILE_ALL = """\
import sys
bad = []
for path in sys.argv[1:]:
    try:
        compile(open(path, encoding="utf-8").read(), path, "exec")
    except SyntaxError as exc:
        bad.append(f"{path}:{exc.lineno}: {exc.msg}")
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _python310() -> str | None:
    """A working Python 3.10 interpreter: on PATH, or one pyenv installed."""
    candidates = [shutil.which("python3.10") or ""]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))
    for exe in filter(None, candidates):
        done = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"],
                              capture_output=True, text=True, check=False, timeout=60)
        if done.returncode == 0 and done.stdout.strip() == "(3, 10)":
            return exe
    return None


def test_every_module_parses_as_python_310() -> None:
    bad = []
    for path in _sources():
        try:
            ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, 10))
        except SyntaxError as exc:
            bad.append(f"{path}:{exc.lineno}: {exc.msg}")
    assert len(_sources()) > 50
    assert not bad, bad


def test_a_feature_of_311_is_caught() -> None:
    """The check above is not blind: ``except*`` (3.11) fails it."""
    source = "try:\n    pass\nexcept* ValueError:\n    pass\n"
    with pytest.raises(SyntaxError):
        ast.parse(source, feature_version=(3, 10))


def test_a_real_python_310_compiles_every_module() -> None:
    exe = _python310()
    if exe is None:
        pytest.skip("no Python 3.10 interpreter on this machine")
    done = subprocess.run([exe, "-c", COMPILE_ALL, *map(str, _sources())],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

"""mypy over every module of pochitrain/tensorrt/ against the tensorrt-stubs package.

The full TensorRT cannot be installed on CI machines, so its API use is checked by types.
tensorrt-stubs (``pip install --no-deps tensorrt-stubs``) is not usable as installed: mypy needs
the .pyi files on MYPYPATH, and ``tensorrt_bindings/tensorrt.pyi`` does not parse (parameters
named ``in``; ``add_scale_nd`` has a non-default parameter after defaults). The test copies the
stubs into a temp folder with those lines patched. It fails, not skips, without the stubs.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUB_FILES = ("tensorrt/__init__.pyi", "tensorrt_bindings/__init__.pyi",
              "tensorrt_bindings/tensorrt.pyi")


def _patched_typings(dest: Path) -> Path:
    try:
        dist = importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("tensorrt-stubs is not installed: pip install --no-deps tensorrt-stubs")
    for rel in STUB_FILES:
        src = Path(str(dist.locate_file(rel)))
        assert src.is_file(), f"tensorrt-stubs lacks {rel}"
        text = src.read_text(encoding="utf-8")
        if rel.endswith("tensorrt.pyi"):
            # 'in' is a keyword: rename the parameter (only inside def signatures)
            text = re.sub(r"(?m)^(\s*def .*?[(,]\s*)in(: )",
                          lambda m: m.group(1) + "in_" + m.group(2), text)
            text = text.replace("power: Weights = None, channel_axis: int)",
                                "power: Weights = None, channel_axis: int = ...)")
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    return dest


MYPY_CONFIG = """\
[mypy]
python_version = 3.10
ignore_missing_imports = True
follow_imports = silent
show_error_codes = True
[mypy-tensorrt.*,tensorrt_bindings.*]
# the stub file itself has errors (pybind names as types); read it, do not judge it
ignore_errors = True
"""

PROBE = """\
import tensorrt


def f(ctx: tensorrt.IExecutionContext) -> None:
    ctx.set_tensor_adress("input", 0)
"""


def test_tensorrt_package_type_checks(tmp_path: Path) -> None:
    typings = _patched_typings(tmp_path / "typings")
    config = tmp_path / "mypy.ini"
    config.write_text(MYPY_CONFIG, encoding="utf-8")
    # A misspelt call must be caught: proves the stubs are really read (ignore_missing_imports
    # would otherwise let a broken set-up pass silently).
    probe = tmp_path / "probe_typo.py"
    probe.write_text(PROBE, encoding="utf-8")
    modules = sorted(str(p) for p in (ROOT / "pochitrain" / "tensorrt").glob("*.py"))
    assert any(m.endswith("build.py") for m in modules)
    env = dict(os.environ, MYPYPATH=str(typings))
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(config), "--no-error-summary",
           "--cache-dir", str(tmp_path / "cache"), *modules, str(probe)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                            check=False)
    lines = [line for line in result.stdout.splitlines() if ": error:" in line]
    probe_errors = [line for line in lines if "probe_typo.py" in line]
    assert any("set_tensor_adress" in line for line in probe_errors), result.stdout + \
        result.stderr
    others = [line for line in lines if "probe_typo.py" not in line]
    assert others == [], "\n".join(others)

"""One mypy run over the whole package, the TensorRT test double and two planted mistakes,
against the tensorrt-stubs package.

The full TensorRT cannot be installed on CI machines, so its API use is checked by types.
tensorrt-stubs (``pip install --no-deps tensorrt-stubs``) is not usable as installed: mypy needs
the .pyi files on MYPYPATH, and ``tensorrt_bindings/tensorrt.pyi`` does not parse (parameters
named ``in``; ``add_scale_nd`` has a non-default parameter after defaults). The fixture copies
the stubs into a temp folder with those lines patched. It fails, not skips, without the stubs.

The planted mistakes prove the stubs are really read (``ignore_missing_imports`` would
otherwise let a broken set-up pass silently): a misspelt ``set_tensor_adress`` call, and the
test double with its ``set_tensor_address`` misspelt (so it no longer matches the API).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from dataclasses import dataclass
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
[mypy-tensorrt.*,tensorrt_bindings.*,tensorrt_libs.*]
# the stub file itself has errors (pybind names as types); read it, do not judge it
ignore_errors = True
[mypy-torch.*,torchvision.*]
# far faster; torch is typed where we call it through our own annotations
follow_imports = skip
"""

PROBE = """\
import tensorrt


def f(ctx: tensorrt.IExecutionContext) -> None:
    ctx.set_tensor_adress("input", 0)
"""


@dataclass
class MypyRun:
    errors: list[str]  # "path:line: error: ..." lines
    output: str

    def errors_in(self, name: str) -> list[str]:
        return [line for line in self.errors if Path(line.split(":", 1)[0]).name == name]


@pytest.fixture(scope="session")
def mypy_run(tmp_path_factory: pytest.TempPathFactory) -> MypyRun:
    tmp = tmp_path_factory.mktemp("mypy")
    typings = _patched_typings(tmp / "typings")
    config = tmp / "mypy.ini"
    config.write_text(MYPY_CONFIG, encoding="utf-8")
    probe = tmp / "probe_typo.py"
    probe.write_text(PROBE, encoding="utf-8")
    bad_double = tmp / "bad_double.py"
    bad_double.write_text((ROOT / "tests" / "trt_double.py").read_text().replace(
        "def set_tensor_address(self", "def set_tensor_adress(self"), encoding="utf-8")
    env = dict(os.environ, MYPYPATH=str(typings))
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(config), "--no-error-summary",
           "--cache-dir", str(tmp / "cache"), "pochitrain", "tests/trt_double.py",
           str(probe), str(bad_double)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    return MypyRun(errors, proc.stdout + proc.stderr)


def test_planted_mistakes_are_caught(mypy_run: MypyRun) -> None:
    assert any("set_tensor_adress" in e for e in mypy_run.errors_in("probe_typo.py")), \
        mypy_run.output
    assert any("set_tensor_adress" in e for e in mypy_run.errors_in("bad_double.py")), \
        mypy_run.output


def test_package_and_test_double_type_check(mypy_run: MypyRun) -> None:
    """Every module of pochitrain (the TensorRT build and runtime among them) and the test
    double agree with the types, the TensorRT stubs included."""
    others = [e for e in mypy_run.errors
              if Path(e.split(":", 1)[0]).name not in ("probe_typo.py", "bad_double.py")]
    assert others == [], "\n".join(others)

"""The mypy run of tests/test_types.py: the whole package, the TensorRT test double and two
planted mistakes, against the tensorrt-stubs package (see that module for why).

``TypeCheck(folder)`` launches mypy and returns at once; conftest.py calls it when the session
begins, so the run (a long one: it reads the package and the libraries it calls) uses a spare
core while other tests run, and test_types.py only waits for its result.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from background import lowest_priority

ROOT = Path(__file__).resolve().parents[1]
STUB_FILES = ("tensorrt/__init__.pyi", "tensorrt_bindings/__init__.pyi",
              "tensorrt_bindings/tensorrt.pyi")
# Hang guard only: a working run ends long before it.
HANG_GUARD_S = 600

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


class StubsMissing(Exception):
    """tensorrt-stubs is not installed, or lacks a file the check reads."""


@dataclass
class MypyRun:
    errors: list[str]  # "path:line: error: ..." lines
    output: str

    def errors_in(self, name: str) -> list[str]:
        return [line for line in self.errors if Path(line.split(":", 1)[0]).name == name]


def patched_typings(dest: Path) -> Path:
    """The stubs copied under ``dest`` with the two lines that do not parse patched."""
    try:
        dist = importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        raise StubsMissing("tensorrt-stubs is not installed: "
                           "pip install --no-deps tensorrt-stubs") from None
    for rel in STUB_FILES:
        src = Path(str(dist.locate_file(rel)))
        if not src.is_file():
            raise StubsMissing(f"tensorrt-stubs lacks {rel}")
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


class TypeCheck:
    """One mypy process over the package, the double and the planted mistakes."""

    def __init__(self, tmp: Path) -> None:
        self.problem: str | None = None
        self.proc: subprocess.Popen[str] | None = None
        self._result: MypyRun | None = None
        try:
            typings = patched_typings(tmp / "typings")
        except StubsMissing as exc:
            self.problem = str(exc)
            return
        config = tmp / "mypy.ini"
        config.write_text(MYPY_CONFIG, encoding="utf-8")
        probe = tmp / "probe_typo.py"
        probe.write_text(PROBE, encoding="utf-8")
        bad_double = tmp / "bad_double.py"
        bad_double.write_text((ROOT / "tests" / "trt_double.py").read_text().replace(
            "def set_tensor_address(self", "def set_tensor_adress(self"), encoding="utf-8")
        env = dict(os.environ, MYPYPATH=str(typings))
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(config),
               "--no-error-summary", "--cache-dir", str(tmp / "cache"), "pochitrain",
               "tests/trt_double.py", str(probe), str(bad_double)]
        self.proc = subprocess.Popen(lowest_priority(cmd), cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self) -> MypyRun:
        """Waits for mypy; raises ``StubsMissing`` when the check could not start."""
        if self.problem is not None:
            raise StubsMissing(self.problem)
        assert self.proc is not None
        if self._result is None:
            out, err = self.proc.communicate(timeout=HANG_GUARD_S)
            errors = [line for line in out.splitlines() if ": error:" in line]
            self._result = MypyRun(errors, out + err)
        return self._result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

"""One mypy run over the whole package, the TensorRT test double and two planted mistakes,
against the tensorrt-stubs package.

The full TensorRT cannot be installed on CI machines, so its API use is checked by types.
tensorrt-stubs (``pip install --no-deps tensorrt-stubs``) is not usable as installed: mypy needs
the .pyi files on MYPYPATH, and ``tensorrt_bindings/tensorrt.pyi`` does not parse (parameters
named ``in``; ``add_scale_nd`` has a non-default parameter after defaults). tests/typecheck.py
copies the stubs into a temp folder with those lines patched. It fails, not skips, without the
stubs.

The planted mistakes prove the stubs are really read (``ignore_missing_imports`` would
otherwise let a broken set-up pass silently): a misspelt ``set_tensor_adress`` call, and the
test double with its ``set_tensor_address`` misspelt (so it no longer matches the API).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typecheck import MypyRun, StubsMissing, TypeCheck


@pytest.fixture(scope="session")
def mypy_run(type_check: TypeCheck | None) -> MypyRun:
    """The run started with the session (conftest.py ``type_check``)."""
    assert type_check is not None
    try:
        return type_check.result()
    except StubsMissing as exc:
        pytest.fail(str(exc))


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

"""The CLI: every verb has help for every option, and startup imports no heavy library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pochitrain.cli.main import VERBS, build_parser

HEAVY = ("torch", "onnxruntime", "onnx", "tensorrt", "tensorrt_rtx_bindings", "matplotlib",
         "numpy", "PIL", "sklearn", "optuna")


def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from pochitrain.cli.main import VERBS, build_parser\n"
        "build_parser()\n"
        "for v in VERBS: build_parser(verb=v)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_option_has_help(verb: str) -> None:
    parser = build_parser(verb=verb)
    sub = next(a for a in parser._actions if a.dest == "_verb").choices[verb]  # type: ignore[union-attr]
    assert sub.description
    for action in sub._actions:
        assert action.help, f"{verb}: option {action.option_strings or action.dest} has no help"


def test_console_script_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "pochitrain.cli.main", "--help"], check=False,
                         capture_output=True, text=True)
    assert out.returncode == 0
    for verb in VERBS:
        assert verb in out.stdout


# what a command must not import before it has checked its input file (seconds each)
SLOW_IMPORTS = ("torch", "onnxruntime", "onnx", "tensorrt_rtx_bindings", "matplotlib", "fastapi",
                "uvicorn")


@pytest.mark.parametrize(("argv", "exit_code"), [
    (["train", "-c", "missing.py"], 2), (["train", "--resume", "missing.run"], 2),
    (["export-onnx", "missing.pth"], 1),
    (["convert", "missing.onnx"], 1), (["infer", "missing.pth"], 1),
    (["infer-onnx", "missing.onnx"], 1), (["serve", "missing.pth"], 1)],
    ids=lambda value: value[0] if isinstance(value, list) else str(value))
def test_a_missing_input_file_is_told_before_any_heavy_import(argv: list[str], exit_code: int,
                                                               tmp_path: Path) -> None:
    """A mistyped path costs no import of torch, ONNX or the server's libraries: the
    command's usual error and exit code (2 for a config: a usage error), at once."""
    code = (
        "import sys\n"
        "from pochitrain.cli.main import run\n"
        f"code = run({argv!r})\n"
        f"print(code, sorted(m for m in {SLOW_IMPORTS!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=False)
    assert out.stdout.strip() == f"{exit_code} []", (out.stdout, out.stderr)
    assert "missing." in out.stderr and "Traceback" not in out.stderr

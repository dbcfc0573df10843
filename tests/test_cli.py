"""The CLI: every verb has help for every option, and startup imports no heavy library."""

from __future__ import annotations

import subprocess
import sys

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

"""Argument errors (argparse's) are bilingual like every other error: usage, a Japanese line,
then argparse's English line naming the option; exit code 2, no traceback."""

from __future__ import annotations

import pytest

from pochitrain.cli.main import run
from pochitrain.errors import is_bilingual


@pytest.mark.parametrize(("argv", "english"), [
    (["train", "--epochs", "0"], "argument --epochs: must be 1 or more, got 0"),
    (["serve", "m.pth", "--workers", "many"],
     "argument --workers: expected a whole number, got 'many', or auto"),
    (["nosuch"], "invalid choice: 'nosuch'"),
    (["infer", "m.pth", "--pipeline", "bogus"], "argument --pipeline: invalid choice: 'bogus'"),
])
def test_argument_errors_say_it_in_japanese_then_english(
        argv: list[str], english: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        run(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    japanese, english_line = err.rstrip("\n").splitlines()[-2:]
    assert is_bilingual(f"{japanese}\n{english_line}"), err
    assert english in english_line
    assert err.lstrip().startswith("usage: pochi")

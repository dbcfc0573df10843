"""Checks of the Python API's arguments: each returns the normalised value or raises a
UsageError naming the argument, what it must be and what to pass (``top_k=3``, not a raw
TypeError from deep inside)."""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any

from pochitrain.errors import UsageError


def argument_error(name: str, value: Any, expected: str, example: str) -> UsageError:
    """A Python API argument of the wrong type or value: what it must be, what to pass."""
    return UsageError("引数の型または値が正しくありません\n"
                      f"Argument {name} must be {expected}; got {value!r} "
                      f"({type(value).__name__}).", f"Pass {name}={example}.")


def count_argument(name: str, value: Any, minimum: int = 1) -> int:
    """A whole-number argument (``top_k``, ``batch_size``, ...) of at least ``minimum``."""
    if (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and int(value) >= minimum):
        return int(value)
    example = str(minimum)
    text = str(value).strip()
    if isinstance(value, str) and text.isdigit() and int(text) >= minimum:
        example = text  # top_k="3": the same number without quotes
    elif isinstance(value, float) and value.is_integer() and value >= minimum:
        example = str(int(value))
    raise argument_error(name, value, f"a whole number >= {minimum} (an int)", example)


def str_argument(name: str, value: Any, example: str) -> str:
    """A str argument (a model name, a device, ...)."""
    if not isinstance(value, str):
        raise argument_error(name, value, "a str", example)
    return value


def path_argument(name: str, value: Any, example: str = "'path/to/folder'") -> Path | None:
    """An optional path argument (str or os.PathLike) as a Path; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)):
        raise argument_error(name, value, "a path (str or pathlib.Path)", example)
    return Path(value)


def file_argument(name: str, value: Any, example: str = "'path/to/file'") -> Path:
    """A file path argument (str or os.PathLike) as a Path; a folder is refused as one."""
    if (isinstance(value, bool) or not isinstance(value, (str, os.PathLike))
            or not os.fspath(value)):
        raise argument_error(name, value, "a file path (str or pathlib.Path)", example)
    path = Path(value)
    if path.is_dir():
        raise UsageError("ファイルではなくフォルダが指定されています\n"
                         f"{name} is a folder, not a file: {path}",
                         f"Pass the file itself, e.g. {name}={example}.")
    return path

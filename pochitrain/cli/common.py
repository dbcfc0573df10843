"""Argument helpers shared by verbs: validated types with actionable messages."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole_number(text: str, minimum: int) -> int:
    """``text`` as an int of at least ``minimum``, or argparse's error saying what to pass."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
    return value


def positive_int(text: str) -> int:
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return whole_number(text, 0)


def count_at_most(limit: int) -> Callable[[str], int]:
    """An argparse type: a whole number from 0 to ``limit``."""
    def parse(text: str) -> int:
        value = non_negative_int(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit}, got {value}")
        return value
    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):  # NaN compares false to everything
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {text}")
    return value


def add_input_size(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--input-size", nargs="+", type=positive_int, metavar=("H", "W"),
                        default=None, help=help_text)


def input_size_arg(value: list[int] | None) -> tuple[int, int] | None:
    """argparse cannot say 'exactly two' with a good message: check after parsing."""
    if value is None:
        return None
    if len(value) != 2:
        from pochitrain.errors import UsageError

        raise UsageError(
            "--input-size には高さと幅の 2 つの値を指定してください\n"
            f"--input-size takes two values, HEIGHT WIDTH; got {len(value)}: {value}",
            "Example: --input-size 224 224",
        )
    return value[0], value[1]


def add_config(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    parser.add_argument(
        "-c", "--config-path", "--config", dest="config", default=None, metavar="CONFIG",
        help=help_text or "config.py to read preprocessing/classes from when the model file "
        "carries none (default: auto-detected beside the run)",
    )

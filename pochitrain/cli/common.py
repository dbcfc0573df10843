"""Argument helpers shared by verbs: validated types with actionable messages."""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Callable
from typing import Any


def whole_number(text: str, minimum: float = -math.inf, maximum: float = math.inf) -> int:
    """``text`` as an int from ``minimum`` to ``maximum``, or argparse's error saying what to
    pass."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
    if value > maximum:
        raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
    return value


positive_int = functools.partial(whole_number, minimum=1)
non_negative_int = functools.partial(whole_number, minimum=0)


def count_at_most(limit: int) -> Callable[[str], int]:
    """An argparse type: a whole number from 0 to ``limit``."""
    return functools.partial(whole_number, minimum=0, maximum=limit)


def number_arg(ok: Callable[[float], bool], problem: str,
               not_a_number: str | None = None) -> Callable[[str], float]:
    """An argparse type: a float for which ``ok`` holds. The messages are formatted with
    ``text``; ``not_a_number`` (default: ``problem``) is for text that is no number."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError((not_a_number or problem).format(text=text)) from None
        if not ok(value):  # NaN compares false to everything: refused
            raise argparse.ArgumentTypeError(problem.format(text=text))
        return value
    return parse


positive_float = number_arg(lambda v: 0 < v < math.inf, "must be more than 0, got {text}",
                            "expected a number, got {text!r}")
non_negative_float = number_arg(lambda v: 0 <= v < math.inf,
                                "must be a finite number, 0 or more, got {text}",
                                "expected a number, got {text!r}")


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


def add_config(parser: argparse.ArgumentParser, help_text: str | None = None,
               default: str | None = None) -> None:
    parser.add_argument(
        "-c", "--config-path", "--config", dest="config", default=default, metavar="CONFIG",
        help=help_text or "config.py to read preprocessing/classes from when the model file "
        "carries none (default: auto-detected beside the run)",
    )


def add_runtime_options(parser: argparse.ArgumentParser,
                        providers_default: str) -> Any:
    """--device (PyTorch) and --providers (ONNX) of a verb that opens any model file, and the
    group of PyTorch-on-GPU options, which is returned for more."""
    parser.add_argument("--device", default="auto",
                        help="PyTorch only: auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--providers", nargs="+", default=None, metavar="EP",
                        help="ONNX only: execution providers, e.g. cpu, cuda, tensorrt "
                        f"(default: {providers_default})")
    gpu = parser.add_argument_group("PyTorch on a GPU (.pth only)")
    gpu.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                     help="autocast precision of the model call on CUDA (default: fp32)")
    gpu.add_argument("--channels-last", action="store_true",
                     help="run the model in channels_last (NHWC) memory layout; faster with "
                     "fp16/bf16 on tensor-core GPUs")
    return gpu

"""Console output shared by all verbs (rich, imported lazily by callers)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from pochitrain.errors import PochiError

_console: Console | None = None


def console() -> Console:
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(highlight=False)
    return _console


def info(message: str) -> None:
    console().print(message)


def warn(message: str) -> None:
    console().print(f"[yellow]warning:[/yellow] {message}")


def print_error(exc: PochiError) -> None:
    """Message and remedy on stderr; never a traceback."""
    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True, highlight=False)
    err.print(f"[bold red]エラー / Error:[/bold red] {escape(exc.message)}", soft_wrap=True)
    if exc.remedy:
        err.print(f"[bold]対処 / Fix:[/bold] {escape(exc.remedy)}", soft_wrap=True)
    sys.stderr.flush()

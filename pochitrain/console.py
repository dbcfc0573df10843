"""Console output shared by all verbs (rich, imported lazily by callers)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from pochitrain.errors import PochiError

_console: Console | None = None
PIPE_WIDTH = 4096  # columns when stdout is not a terminal: tables and paths are never cut


def safe_streams() -> None:
    """Where stdout / stderr cannot encode Japanese (PYTHONIOENCODING=ascii, some Windows
    consoles), write \\uXXXX escapes for those characters instead of raising
    UnicodeEncodeError: bilingual messages degrade, the English part stays readable."""
    for stream in (sys.stdout, sys.stderr):
        try:
            "エラー / 対処 ✓ …".encode(getattr(stream, "encoding", None) or "ascii")
        except (UnicodeEncodeError, LookupError):
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(errors="backslashreplace")


# SIGTERM / SIGHUP (``kill``, a stopping container, a closed terminal) stop a command as Ctrl+C
# does; the numbers received go here, for the exit code 128 + signal
TERMINATING_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))
received_signals: list[int] = []


def interrupted_exit_code() -> int:
    """130 after Ctrl+C, 128 + the signal after SIGTERM / SIGHUP."""
    return 128 + received_signals[0] if received_signals else 130


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM / SIGHUP raise KeyboardInterrupt, so temp files are removed and
    claimed folders released as after Ctrl+C instead of being left behind. Verbs that stop
    gracefully on Ctrl+C (train, optimize) install their own handlers over these."""
    received_signals.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        received_signals.append(signum)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in TERMINATING_SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def console() -> Console:
    """The shared stdout console. Lines are never folded (soft wrap); when stdout is a pipe or
    a file, tables get their full width instead of cutting cells (paths) with "…"."""
    global _console
    if _console is None:
        from rich.console import Console

        safe_streams()
        _console = Console(highlight=False, soft_wrap=True)
        if not _console.is_terminal:
            _console.width = PIPE_WIDTH
    return _console


def info(message: str) -> None:
    console().print(message)


def warn(message: str) -> None:
    console().print(f"[yellow]warning:[/yellow] {message}")


def print_error(exc: PochiError) -> None:
    """Message and remedy on stderr; never a traceback."""
    from rich.console import Console
    from rich.markup import escape

    safe_streams()
    err = Console(stderr=True, highlight=False)
    err.print(f"[bold red]エラー / Error:[/bold red] {escape(exc.message)}", soft_wrap=True)
    if exc.remedy:
        err.print(f"[bold]対処 / Fix:[/bold] {escape(exc.remedy)}", soft_wrap=True)
    sys.stderr.flush()


# ---- progress: the one place that builds rich progress displays ----------------------------

def make_progress(enabled: bool = True, kind: str = "bar") -> Any:
    """A rich ``Progress`` (use as a context manager); disabled (prints nothing) when not
    ``enabled``. ``kind``: "bar" (count of total), "loss" (bar + a ``loss`` field + ETA),
    "spinner" (a stage name and elapsed time, for work of unknown length)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any]
    if kind == "spinner":
        columns = [SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()]
    else:
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn()]
        if kind == "loss":
            columns[3:3] = [TextColumn("loss {task.fields[loss]:.4f}")]
            columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console(), transient=True, disable=not enabled)


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """One counted task; yields ``advance(n)``."""
    with make_progress(enabled) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n: prog.advance(task, n)

"""Draw a command's pictures in a helper process started when the command starts.

matplotlib's import and the font set-up take interpreter time; in a thread of the command
they hold the GIL against the GPU input pipeline and the model, in a process of their own they
run on another core (docs/benchmarks.md). At the end the command hands over one drawing job (a
function of ``pochitrain.reports`` or of a named pochitrain module, pickled:
:meth:`PlotHelper.submit`), writes its other files meanwhile and waits for it. Below
``SPARE_CORES`` cores a thread imports matplotlib instead; when the helper fails,
:meth:`PlotHelper.wait` returns False and the caller draws itself, where a real error (a bad
``confusion_matrix_config``, say) is raised as it always was.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import subprocess
import sys
import threading
from typing import Any

DONE = b"done\n"
_started: list[bool] = []  # a helper was started in this process
# Fewer cores than this (one): matplotlib is imported by a thread of the command instead.
# On 2 cores the helper is still faster: a thread's import holds the GIL against torch's.
SPARE_CORES = 2
DRAW_TIMEOUT_S = 120.0  # a hang guard: matplotlib's import plus one picture is far shorter


class PlotHelper:
    """``start()`` early, ``draw(name, *args, **kwargs)`` at the end, ``close()`` always."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._handed: subprocess.Popen[bytes] | None = None  # has a job (``submit``)
        self._waiter: threading.Thread | None = None
        self._finished = False

    def start(self) -> PlotHelper:
        """Start the helper, only for the first picture of a process that has not imported
        matplotlib: a long-lived process (the Python API, a notebook, the tests) imports it
        once and then draws faster itself than a new helper can start."""
        if _started or "matplotlib.figure" in sys.modules:
            return self
        _started.append(True)
        if (os.cpu_count() or 1) < SPARE_CORES:  # no core to spare: a thread, as before
            from pochitrain.plotting import preload

            preload()
            return self
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "pochitrain.plot_helper"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError:
            self._proc = None
        return self

    def draw(self, name: str, *args: Any, **kwargs: Any) -> bool:
        """Run ``pochitrain.reports.<name>(*args, **kwargs)`` in the helper (or
        ``pochitrain.<module>.<function>`` for ``"pochitrain.<module>:<function>"``); True when
        it finished without error."""
        self.submit(name, *args, **kwargs)
        return self.wait()

    def submit(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Hand ``pochitrain.reports.<name>(*args, **kwargs)`` to the helper and return at
        once (a thread writes the job, as the helper may still be importing); :meth:`wait`
        then tells whether it finished without error."""
        proc, self._proc = self._proc, None
        if proc is None or proc.stdin is None or proc.stdout is None:
            return
        try:
            job = pickle.dumps((name, args, kwargs))
        except (pickle.PicklingError, TypeError, AttributeError):
            _stop(proc)
            return
        self._handed = proc
        self._waiter = threading.Thread(target=self._finish, args=(proc, job),
                                        name="pochi-plot-job", daemon=True)
        self._waiter.start()

    def _finish(self, proc: subprocess.Popen[bytes], job: bytes) -> None:
        try:
            out, _ = proc.communicate(job, timeout=DRAW_TIMEOUT_S)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            _stop(proc)  # a helper that hangs must not hang the command: draw here instead
            return
        self._finished = proc.returncode == 0 and out.endswith(DONE)

    def wait(self) -> bool:
        """True when the job of :meth:`submit` finished without error."""
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            return False
        waiter.join()
        self._handed = None
        return self._finished

    def close(self) -> None:
        """Stop a helper that got no job (the command failed or drew nothing), or whose job
        was not waited for (the command failed meanwhile)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _stop(proc)
        handed, waiter, self._waiter = self._handed, self._waiter, None
        if handed is not None and waiter is not None:
            if handed.poll() is None:
                handed.kill()  # its pipes then end, and so does the thread's wait
            waiter.join()
            _stop(handed)
        from pochitrain.plotting import wait_preload

        wait_preload()  # a thread cut off mid-import at exit can crash the interpreter


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a helper with no job left: at once (it may still be importing matplotlib; it has
    written nothing, and waiting for it would only delay the command)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def main() -> int:
    from pochitrain.plotting import use_cjk_font

    use_cjk_font()
    import matplotlib.backends.backend_agg
    import matplotlib.figure  # noqa: F401
    import sklearn.metrics  # noqa: F401 - the classification report's

    from pochitrain import reports

    data = sys.stdin.buffer.read()
    if not data:  # the command ended without a picture to draw
        return 0
    name, args, kwargs = pickle.loads(data)
    module_name, _, function = name.rpartition(":")
    if module_name and not module_name.startswith("pochitrain."):
        return 1  # only pochitrain's own drawing functions
    module = importlib.import_module(module_name) if module_name else reports
    getattr(module, function)(*args, **kwargs)
    sys.stdout.buffer.write(DONE)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    # its files are written and closed: the command, waiting for this process to end, need
    # not wait for the interpreter's teardown of matplotlib and scikit-learn too
    os._exit(status)

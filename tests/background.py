"""Commands that run in their own processes, started when the session begins.

Some tests only wait for a child process (a DDP training, the Triton interpreter, a bench
suite, a fresh interpreter's checks): one core each for a while. conftest.py starts them as
the session begins, at a low priority, when a selected test reads them
(``conftest.BACKGROUND_STARTS``, and the ``SCRIPTS`` of test modules: ``Script``), so they
use a spare core while other tests run; the tests' modules run last, wait for the results
and judge them. Nothing depends on timing: a test waits for its process to end (a hang guard
only).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Hang guard only: a working run ends long before it.
HANG_GUARD_S = 600
# The lowest priority: a background process takes only what the test in the foreground
# leaves of the cores, so it never slows that test down; while a test waits for it, it
# gets every core.
NICE = 19


# A process group of its own (so that the hang guard stops its children too), but not a
# session of its own: with the kernel's autogroup scheduling every session gets an equal
# share of the cores whatever its processes' nice values, which would put the background
# jobs level with the tests instead of under them.
OWN_GROUP: dict = ({"process_group": 0} if sys.version_info >= (3, 11)
                   else {"start_new_session": True})


def lowest_priority(cmd: list[str], niceness: int = NICE) -> list[str]:
    """``cmd`` run through ``nice`` where the system has it (the process keeps its pid)."""
    nice = shutil.which("nice")
    return [nice, "-n", str(niceness), *cmd] if nice else cmd


@dataclass
class Job:
    """One command in its own process (and process group: the guard stops its children)."""

    proc: subprocess.Popen[str] | None
    cwd: Path = ROOT  # its working folder
    problem: str | None = None  # why it could not start
    _done: subprocess.CompletedProcess[str] | None = field(default=None, repr=False)

    def result(self) -> subprocess.CompletedProcess[str]:
        """Waits for the process: its exit code, stdout and stderr."""
        assert self.proc is not None, self.problem
        if self._done is None:
            try:
                out, err = self.proc.communicate(timeout=HANG_GUARD_S)
            except subprocess.TimeoutExpired:
                self.stop()
                raise
            self._done = subprocess.CompletedProcess(self.proc.args, self.proc.returncode,
                                                     out, err)
        return self._done

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()


def start(args: list[str], cwd: Path = ROOT, **env: str) -> Job:
    """``python <args>`` with the repository on the path, one OpenMP thread and ``env``, at the
    lowest priority."""
    return launch(args, cwd, env, NICE)


def launch(args: list[str], cwd: Path, env: dict[str, str], niceness: int) -> Job:
    """``start`` at another ``niceness``."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    full_env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **env}
    return Job(subprocess.Popen(lowest_priority([sys.executable, *args], niceness), cwd=cwd,
                                env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, **OWN_GROUP), cwd)


@dataclass(frozen=True)
class Script:
    """``python -c code *args`` in a fresh interpreter, in a folder of its own (its working
    folder) that first receives ``files`` (name -> text). A test module lists its scripts in
    a module-level ``SCRIPTS = {name: Script(...)}`` and reads them through the ``scripts``
    fixture: conftest.py starts them as the session begins, so a test that only judges what
    a fresh interpreter printed no longer waits for its start-up."""

    code: str
    args: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)

    def start(self, folder: Path) -> Job:
        for name, text in self.files.items():
            (folder / name).write_text(text, encoding="utf-8")
        # short jobs: above the long ones (nice 10, not 19), so they end early in the session,
        # far from any timeout inside them (the plot helper's hang guard)
        return launch(["-c", self.code, *self.args], folder, {}, 10)

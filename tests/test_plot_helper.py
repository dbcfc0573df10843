"""plot_helper: a command's picture drawn by a helper process (matplotlib never imported by
the command itself), with the command drawing it itself when the helper cannot. Each case
runs in a fresh interpreter, as a command does (a helper starts only in a process that has
not imported matplotlib, once): the ``SCRIPTS`` below, started as the session begins
(``background.Script``)."""

from __future__ import annotations

import subprocess
import sys

from background import Job, Script
from PIL import Image

DRAW = """
import sys
from pathlib import Path
import numpy as np
from pochitrain import plot_helper
from pochitrain.plot_helper import PlotHelper
plot_helper.SPARE_CORES = 1  # as on a machine with cores to spare
helper = PlotHelper().start()
started = helper._proc is not None
cm = np.array([[5, 1], [2, 7]])
ok = helper.draw("plot_confusion", cm, ["ねこ", "dog"], Path(sys.argv[1]), "pytorch: 80%", None)
print(started, ok, "matplotlib" in sys.modules, PlotHelper().start()._proc is None)
"""

BAD_STYLE = """
import sys
from pathlib import Path
import numpy as np
from pochitrain import plot_helper
from pochitrain.plot_helper import PlotHelper
from pochitrain.reports import plot_confusion
plot_helper.SPARE_CORES = 1
job = (np.eye(2, dtype=int), ["a", "b"], Path(sys.argv[1]), "t", {"cmap": "no_such"})
helper = PlotHelper().start()
print(helper._proc is not None, helper.draw("plot_confusion", *job), flush=True)
plot_confusion(*job)
"""

CLOSE = """
from pochitrain import plot_helper
from pochitrain.plot_helper import PlotHelper
plot_helper.SPARE_CORES = 1
helper = PlotHelper().start()
proc = helper._proc
helper.close()
print(proc is not None, proc.returncode is not None, helper.draw("plot_confusion"))
"""


def test_the_helper_draws_and_the_command_never_imports_matplotlib(
        scripts: dict[str, Job]) -> None:
    job = scripts["helper_draws"]
    out, png = job.result(), job.cwd / "cm.png"
    # started, drew, matplotlib not imported here, and no second helper in this process
    assert out.stdout.split() == ["True", "True", "False", "True"], out.stderr[-2000:]
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 200


def test_a_failing_drawing_is_left_to_the_caller(scripts: dict[str, Job]) -> None:
    """A bad confusion_matrix_config value: the helper reports failure and writes nothing;
    drawing in the command raises the real error."""
    job = scripts["helper_bad_style"]
    out, png = job.result(), job.cwd / "cm.png"
    assert out.stdout.split() == ["True", "False"]
    assert out.returncode == 1 and "ValueError" in out.stderr and "no_such" in out.stderr
    assert not png.exists()


def test_close_without_a_job_ends_the_helper(scripts: dict[str, Job]) -> None:
    out = scripts["helper_close"].result()
    assert out.stdout.split() == ["True", "True", "False"], out.stderr[-2000:]


FEW_CORES = """
import sys, threading
from pathlib import Path
import numpy as np
from pochitrain import plot_helper
from pochitrain.plot_helper import PlotHelper
plot_helper.SPARE_CORES = 10_000  # no core to spare: a thread imports matplotlib instead
helper = PlotHelper().start()
thread = [t.name for t in threading.enumerate() if t.name == "pochi-preload-mpl"]
job = (np.eye(2, dtype=int), ["a", "b"], Path(sys.argv[1]), "t", None)
print(helper._proc is None, thread == ["pochi-preload-mpl"], helper.draw("plot_confusion", *job))
helper.close()
"""


def test_without_spare_cores_a_thread_preloads_and_the_caller_draws(
        scripts: dict[str, Job]) -> None:
    job = scripts["helper_few_cores"]
    out = job.result()
    assert out.stdout.split() == ["True", "True", "False"], out.stderr[-2000:]
    assert not (job.cwd / "cm.png").exists()  # draw() said False: the caller would draw it


SLOW = """
import subprocess, sys
from pathlib import Path
import numpy as np
from pochitrain import plot_helper
from pochitrain.plot_helper import PlotHelper
plot_helper.SPARE_CORES = 1
plot_helper.DRAW_TIMEOUT_S = 1.0
helper = PlotHelper().start()
helper._proc.kill()
helper._proc.wait()
# in its place, a helper that takes the job and never answers (no race with a real drawing)
never = "import sys, threading; sys.stdin.buffer.read(); threading.Event().wait()"
helper._proc = subprocess.Popen([sys.executable, "-c", never], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
proc = helper._proc
job = (np.eye(2, dtype=int), ["a", "b"], Path(sys.argv[1]), "t", None)
print(helper.draw("plot_confusion", *job), proc.returncode is not None)
"""


def test_a_helper_that_does_not_answer_is_stopped_and_left_to_the_caller(
        scripts: dict[str, Job]) -> None:
    job = scripts["helper_slow"]
    out = job.result()
    assert out.stdout.split() == ["False", "True"], out.stderr[-2000:]
    assert not (job.cwd / "cm.png").exists()


TRAINING = """
import sys
from pathlib import Path
from pochitrain import plot_helper
from pochitrain.plot_helper import PlotHelper
from pochitrain.training_plots import EpochRow
plot_helper.SPARE_CORES = 1  # as on a machine with cores to spare
helper = PlotHelper().start()
rows = [EpochRow(e, 0.01, 1.0 / e, 0.5, 1.2 / e, 0.4, 900.0, 2.0, {"fc": 0.01, "layer1": 0.001})
        for e in (1, 2)]
ok = helper.draw("pochitrain.training_plots:draw_pictures", rows, Path(sys.argv[1]), False)
print(ok, "matplotlib" in sys.modules)
"""


def test_the_helper_draws_a_training_runs_pictures(scripts: dict[str, Job]) -> None:
    """A job of another pochitrain module (``module:function``): the training run's
    pictures, drawn without matplotlib in the command."""
    job = scripts["helper_training"]
    out = job.result()
    assert out.stdout.split() == ["True", "False"], out.stderr[-2000:]
    for name in ("loss.png", "accuracy.png", "layer_wise_lr.png"):
        with Image.open(job.cwd / name) as im:
            assert im.format == "PNG" and im.width > 200


def test_the_helper_runs_only_pochitrains_functions() -> None:
    import pickle

    job = pickle.dumps(("os:getcwd", (), {}))
    out = subprocess.run([sys.executable, "-m", "pochitrain.plot_helper"], input=job,
                         capture_output=True, timeout=120, check=False)
    assert out.returncode == 1 and out.stdout == b"", out.stderr[-2000:]


# the fresh interpreters of the tests above (conftest.py starts them as the session begins)
SCRIPTS = {
    "helper_draws": Script(DRAW, ("cm.png",)),
    "helper_bad_style": Script(BAD_STYLE, ("cm.png",)),
    "helper_close": Script(CLOSE),
    "helper_few_cores": Script(FEW_CORES, ("cm.png",)),
    "helper_slow": Script(SLOW, ("cm.png",)),
    "helper_training": Script(TRAINING, (".",)),
}

"""plot_helper: a command's picture drawn by a helper process (matplotlib never imported by
the command itself), with the command drawing it itself when the helper cannot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pochitrain.plot_helper import PlotHelper

SCRIPT = """
import sys
from pathlib import Path
import numpy as np
from pochitrain.plot_helper import PlotHelper
helper = PlotHelper().start()
cm = np.array([[5, 1], [2, 7]])
ok = helper.draw("plot_confusion", cm, ["ねこ", "dog"], Path(sys.argv[1]), "pytorch: 80%", None)
print(ok, "matplotlib" in sys.modules)
"""


def test_the_helper_draws_and_the_command_never_imports_matplotlib(tmp_path: Path) -> None:
    png = tmp_path / "cm.png"
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(png)], capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.split() == ["True", "False"]
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 200


def test_a_failing_drawing_is_left_to_the_caller(tmp_path: Path) -> None:
    """A bad confusion_matrix_config value: the helper reports failure, writes nothing, and
    drawing in the command raises the real error."""
    from pochitrain.reports import plot_confusion

    job = (np.eye(2, dtype=int), ["a", "b"], tmp_path / "cm.png", "t", {"cmap": "no_such"})
    assert PlotHelper().start().draw("plot_confusion", *job) is False
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="no_such"):
        plot_confusion(*job)


def test_close_without_a_job_ends_the_helper() -> None:
    helper = PlotHelper().start()
    proc = helper._proc
    assert proc is not None
    helper.close()
    assert proc.returncode is not None
    assert helper.draw("plot_confusion") is False  # closed: the caller draws

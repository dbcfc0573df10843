"""benchmarks/run.py infer: one repetition over 20 digits, a CSV row with positive figures, run
on a copy of the package (``--source``) from the repository's root, where ``python -m`` would
otherwise import the root's own."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MACHINE = ["cpu", "cpu_cores", "gpu", "os", "python", "pochitrain", "torch", "torchvision",
           "onnxruntime"]


def test_infer_writes_one_row_per_repetition(trained_checkpoint: Path, val_pairs: Path,
                                             tmp_path: Path) -> None:
    out = tmp_path / "results"
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "pochitrain", tree / "pochitrain",
                    ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "infer", str(trained_checkpoint),
         "--data", str(val_pairs), "--out", str(out), "--repeat", "1", "--source", str(tree),
         "--warmup-runs", "0", "-b", "64", "--args", "--device cpu"],
        check=False, capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    csv_path = out / "infer_resnet18_b64_cpu.csv"
    assert done.stdout.strip() == str(csv_path)
    with csv_path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    row = rows[0]
    assert set(MACHINE) <= set(row)
    # the package the commands ran: the copy, not the root's
    assert Path(row["pochitrain_source"]) == tree / "pochitrain"
    assert (row["command"], row["runtime"], row["device"]) == ("infer", "pytorch", "cpu")
    assert row["batch_size"] == "64" and row["repetition"] == "1"
    assert int(row["images"]) > 0
    for column in ("pure_images_per_s", "e2e_images_per_s", "pure_ms_per_image",
                   "e2e_ms_per_image", "accuracy_percent", "command_wall_s"):
        assert float(row[column]) > 0, column


def test_a_source_without_the_package_is_refused(tmp_path: Path) -> None:
    """--source names a folder that holds no pochitrain: said at once, nothing written."""
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "infer", str(tmp_path / "m.pth"),
         "--data", str(tmp_path), "--out", str(out), "--source", str(tmp_path)],
        check=False, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode != 0 and "no pochitrain package" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not out.exists()

"""pochi quickstart end to end (one epoch): every step runs or says why it cannot here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pochitrain.cli.main import run


def _fewer_digits(per_class: int) -> Callable[[], Any]:
    """scikit-learn's digits cut to ``per_class`` images of each digit: the same sample-data
    step, config and splits, with a training epoch over a few hundred images instead of 1,797
    (the steps and files checked here do not depend on how many there are)."""
    from sklearn.datasets import load_digits

    def load() -> Any:
        digits = load_digits()
        keep = np.concatenate([np.flatnonzero(digits.target == d)[:per_class]
                               for d in range(10)])
        digits.images, digits.target = digits.images[keep], digits.target[keep]
        return digits

    return load


def test_quickstart_runs_every_step(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sklearn.datasets.load_digits", _fewer_digits(30))
    root = tmp_path / "qs"
    assert run(["quickstart", str(root), "--epochs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    for row in ("sample data", "train", "infer (pytorch)", "export-onnx", "infer (onnx)",
                "convert fp32", "convert fp16", "convert int8", "runtimes on the digits"):
        assert row in out, row
    # what it produced, where the table says
    runs = list((root / "work_dirs").iterdir())
    assert len(runs) == 1
    models = runs[0] / "models"
    onnx = min(models.glob("best_epoch*.onnx"), key=lambda p: len(p.name))  # not _fp16 / _qdq
    for suffix in (".engine", "_fp16.engine", "_int8.engine"):
        engine = onnx.with_name(onnx.stem + suffix)
        assert engine.is_file() and Path(f"{engine}.json").is_file()
    results = sorted((runs[0] / "inference_results").iterdir())
    assert [sorted(p.name for p in r.glob("*_summary.txt")) for r in results] == [
        ["pytorch_inference_summary.txt"], ["onnx_inference_summary.txt"]]
    # no GPU here: the TensorRT rows say why instead of failing the run
    assert "not run" in out and "CUDA" in out
    # a second run reuses the sample data (not rewritten) instead of failing on it
    from pochitrain.pipeline.quickstart import sample_data_config

    config = root / "data" / "config.py"
    before = config.stat().st_mtime_ns
    assert sample_data_config(root / "data") == config and config.stat().st_mtime_ns == before

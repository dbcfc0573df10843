"""``pochi serve --workers auto`` (the default): how many server processes for a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from pochitrain.serve.workers import auto_workers


@pytest.mark.parametrize(("cores", "expected"), [(2, 1), (6, 1), (8, 2), (16, 4), (64, 4)])
def test_a_gpu_model_gets_one_worker_per_four_cores_at_most_four(
        monkeypatch: pytest.MonkeyPatch, cores: int, expected: int) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert auto_workers(Path("m.engine"), "auto", None) == expected
    assert auto_workers(Path("m.onnx"), "auto", ["cuda", "cpu"]) == expected
    assert auto_workers(Path("m.onnx"), "auto", ["CUDAExecutionProvider"]) == expected


def test_a_model_on_the_cpu_gets_one_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert auto_workers(Path("m.pth"), "cpu", None) == 1
    assert auto_workers(Path("m.onnx"), "auto", None) == 1  # ONNX Runtime's default: CPU
    assert auto_workers(Path("m.onnx"), "auto", ["cpu"]) == 1
    import torch

    if not torch.cuda.is_available():  # auto resolves to the CPU here
        assert auto_workers(Path("m.pth"), "auto", None) == 1

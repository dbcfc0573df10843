"""The one TensorRT logger (builder and runtime): keeps messages for our own errors and the
build record instead of printing them."""

from __future__ import annotations

from typing import Any


def make_logger(trt: Any) -> Any:
    """An ``ILogger`` of the given TensorRT module (``tensorrt`` or TensorRT-RTX) that records
    errors (ERROR, INTERNAL_ERROR) and warnings in lists."""
    severity = trt.ILogger.Severity
    error_levels = {int(severity.ERROR), int(severity.INTERNAL_ERROR)}

    class _Recorder(trt.ILogger):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, level: Any, msg: str) -> None:
            if int(level) in error_levels:
                self.errors.append(msg)
            elif int(level) == int(severity.WARNING):
                self.warnings.append(msg)

    return _Recorder()

"""pochitrain: train an image classifier, export to ONNX, deploy with TensorRT.

The Python API (each name is imported on first use, so ``import pochitrain`` stays instant)::

    from pochitrain import train, export_onnx, convert, infer, Predictor

    run = train("data/digits/config.py")                       # -> TrainResult
    onnx = export_onnx(run.best_checkpoint)                     # -> ExportOutcome (.path)
    engine = convert(onnx.path, precision="fp16")               # -> ConvertResult
    results = infer(onnx.path, data="data/digits/val")          # -> InferOutcome
    with Predictor(onnx.path) as p:
        print(p.predict("photo.png", top_k=3))

Paths may be ``str`` or ``pathlib.Path`` everywhere. See docs/readme_python_api.md.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "2.0.0"

_API = {
    "train": ("pochitrain.training.run", "run_training"),
    "export_onnx": ("pochitrain.pipeline.export_onnx", "export_onnx"),
    "convert": ("pochitrain.pipeline.convert", "convert"),
    "infer": ("pochitrain.pipeline.infer", "infer"),
    "Predictor": ("pochitrain.predictor", "Predictor"),
    "Prediction": ("pochitrain.predictor", "Prediction"),
    "ConvertOptions": ("pochitrain.pipeline.convert", "ConvertOptions"),
    "Int8Options": ("pochitrain.onnx.int8", "Int8Options"),
    "PochiError": ("pochitrain.errors", "PochiError"),
    # the original pochitrain's API (docs/readme_python_api.md)
    "PochiTrainer": ("pochitrain.compat_api.trainer", "PochiTrainer"),
    "PochiPredictor": ("pochitrain.compat_api.predictor", "PochiPredictor"),
    "create_data_loaders": ("pochitrain.compat_api.data", "create_data_loaders"),
}
__all__ = [
    "ConvertOptions",
    "Int8Options",
    "PochiError",
    "PochiPredictor",
    "PochiTrainer",
    "Prediction",
    "Predictor",
    "__version__",
    "convert",
    "create_data_loaders",
    "export_onnx",
    "infer",
    "train",
]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'pochitrain' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

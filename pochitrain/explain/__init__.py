"""Grad-CAM heatmaps: `pochi explain` and `pochi infer --explain-errors`.

``source`` finds the PyTorch weights of a model file (an .onnx or engine borrows the
checkpoint of its run), ``cam`` wraps the grad-cam library (target layer, heatmaps),
``explainer`` turns images into explained images, ``run`` is the verb and ``errors`` the
inference gallery; ``pochitrain.explain_draw`` draws the pictures. None of these modules
imports torch or the grad-cam library at import time.
"""

from pochitrain.explain.run import ExplainOutcome, explain

__all__ = ["ExplainOutcome", "explain"]

"""Grad-CAM heatmaps: `pochi explain` and `pochi infer --explain-errors`. None of these
modules imports torch or the grad-cam library at import time."""

from pochitrain.explain.run import ExplainOutcome, explain

__all__ = ["ExplainOutcome", "explain"]

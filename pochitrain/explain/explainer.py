"""Images in, explained images out: preprocessing, probabilities, Grad-CAM per class.

Images are decoded and preprocessed exactly as ``pochi infer`` does on its CPU path
(``data.open_rgb`` then the model's ``Preprocess``); the overlays are drawn on those pixels,
so a heatmap lines up with the image as the model saw it (after resize / crop).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pochitrain.errors import UsageError
from pochitrain.explain.cam import GradCam, Heatmaps, pick_layer, require_grad_cam, seen_images
from pochitrain.explain.source import ExplainSource
from pochitrain.explain_draw import ExplainedImage, Panel

TOP_K = 3  # classes per image on the contact sheet
CAM_BATCH = 16  # images per Grad-CAM pass


def target_index(target: str | None, class_names: list[str]) -> int | None:
    """``--target-class``: None for ``top`` (the predicted class), else the class's index."""
    if target is None or target == "top":
        return None
    if target in class_names:
        return class_names.index(target)
    shown = ", ".join(class_names[:20]) + (", ..." if len(class_names) > 20 else "")
    raise UsageError("--target-class に指定したクラスがモデルにありません\n"
                     f"The model has no class {target!r}.",
                     f"Use 'top' (the predicted class) or one of: {shown}.")


@dataclass
class Loaded:
    """The readable images of a batch, preprocessed; the others in ``skipped``."""

    paths: list[Path]
    inputs: np.ndarray  # (N, 3, H, W) float32, normalized
    skipped: list[Path]


def load_images(paths: list[Path], source: ExplainSource) -> Loaded:
    from pochitrain.data import open_rgb

    preprocess = source.context.meta.preprocess
    kept, arrays, skipped = [], [], []
    for path in paths:
        image = open_rgb(path)
        if image is None:
            skipped.append(path)
            continue
        kept.append(path)
        arrays.append(preprocess(image))
    h, w = preprocess.input_size
    inputs = np.stack(arrays) if arrays else np.zeros((0, 3, h, w), np.float32)
    return Loaded(kept, inputs, skipped)


class Explainer:
    """Grad-CAM on one layer of the source's weights; ``close`` removes the hooks."""

    def __init__(self, source: ExplainSource, layer: str | None = None) -> None:
        require_grad_cam()
        self.source = source
        meta = source.context.meta
        self.layer, self.map_shape = pick_layer(source.net, source.model_name,
                                                list(meta.preprocess.input_size),
                                                source.device, layer)
        self.cam = GradCam(source.net, self.layer)

    def describe(self) -> str:
        h, w = self.map_shape[2:]
        return f"Grad-CAM on {self.layer} ({h}x{w} map); {self.source.note()}"

    def explain(self, loaded: Loaded, names: list[str],
                target: int | None = None) -> list[ExplainedImage]:
        """One ``ExplainedImage`` per loaded image: the target class's overlay (``None``: the
        predicted class) and the top-``TOP_K`` classes' overlays."""
        import torch

        if not loaded.paths:
            return []
        batch = torch.from_numpy(loaded.inputs).to(self.source.device)
        pre = self.source.context.meta.preprocess
        seen = seen_images(loaded.inputs, pre.mean, pre.std)
        probs = self.cam.probabilities(batch)
        k = min(TOP_K, probs.shape[1])
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        per_rank = [self.cam.heatmaps(batch, [int(c) for c in top[:, r]], seen)
                    for r in range(k)]
        wanted = per_rank[0] if target is None else self.cam.heatmaps(
            batch, [target] * len(top), seen)
        names_ = self.source.class_names
        pixels = np.rint(seen * 255).astype(np.uint8)
        out = []
        for i, name in enumerate(names):
            cls = int(top[i, 0]) if target is None else target
            panels = [_panel(names_, int(top[i, r]), probs[i], per_rank[r], i)
                      for r in range(k)]
            out.append(ExplainedImage(name, pixels[i], names_[int(top[i, 0])],
                                      float(probs[i, top[i, 0]]),
                                      _panel(names_, cls, probs[i], wanted, i), panels))
        return out

    def close(self) -> None:
        self.cam.close()


def _panel(class_names: list[str], cls: int, probs: np.ndarray, maps: Heatmaps,
           i: int) -> Panel:
    return Panel(class_names[cls], float(probs[cls]), maps.overlays[i], maps.maps[i])

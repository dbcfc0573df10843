"""Images in, explained images out, through the ``grad-cam`` library (PyPI ``grad-cam``,
import ``pytorch_grad_cam``; the optional extra ``pochitrain[explain]``, imported only when a
heatmap is asked for).

Images are decoded and preprocessed exactly as ``pochi infer`` does on its CPU path
(``data.open_rgb`` then the model's ``Preprocess``); the overlays are drawn on those pixels,
so a heatmap lines up with the image as the model saw it (after resize / crop).

The target layer is the last convolutional block of the model family (resnet: ``layer4``;
mobilenet_v3 / efficientnet: the last ``features.N``), unless its feature map is smaller than
``MIN_MAP_SIDE`` on a side for this input size: a 32x32 input leaves resnet's ``layer4`` a
single cell, whose heatmap is flat. Then the deepest block with a map that large is taken.

What a heatmap is computed from (``ExplainSource``): Grad-CAM needs gradients, so it runs on
a checkpoint. For a ``.pth`` that is the model itself, opened by the model facade as ``pochi
infer`` opens it. For an ``.onnx`` or a TensorRT engine it is the checkpoint the file was
exported from, found in the same run: export-onnx records its name and sha256 in the metadata
(``source``), and the engine's sidecar keeps them. The preprocessing and class names stay
those of the file given (what ``pochi infer`` uses for it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pochitrain.batching import stack_one_size
from pochitrain.errors import BackendMissingError, ModelFileError, UsageError
from pochitrain.explain_draw import ExplainedImage, Panel
from pochitrain.meta import ModelMeta, file_sha256
from pochitrain.model import Model, backend_for, open_model
from pochitrain.resolve import ModelContext, resolve_context
from pochitrain.workspace import run_folder_of

if TYPE_CHECKING:
    import torch
    from torch import nn

MIN_MAP_SIDE = 4  # a coarser map can mark a quadrant at best
INSTALL_HINT = 'pip install "pochitrain[explain]"'


def require_grad_cam() -> None:
    """BackendMissingError naming the extra when the grad-cam library is not installed."""
    import importlib.util

    if importlib.util.find_spec("pytorch_grad_cam") is None:
        raise BackendMissingError(
            "Grad-CAM のライブラリ (grad-cam) がインストールされていません\n"
            "Heatmaps need the grad-cam library, which is not installed.",
            f"Install the optional extra: {INSTALL_HINT}")


def block_candidates(model: nn.Module, model_name: str) -> list[str]:
    """Module names of the family's conv blocks, deepest first (any other model: its conv
    layers)."""
    from torch import nn

    names = dict(model.named_modules())
    if model_name.startswith("resnet"):
        return [n for n in ("layer4", "layer3", "layer2", "layer1") if n in names]
    features = names.get("features")
    if isinstance(features, nn.Sequential):
        return [f"features.{i}" for i in reversed(range(len(features)))]
    return [n for n, m in reversed(list(names.items())) if isinstance(m, nn.Conv2d)]


def feature_sizes(model: nn.Module, names: list[str], input_size: list[int],
                  device: str) -> dict[str, tuple[int, ...]]:
    """The output shape of each named module for one blank input (hooks, no gradients)."""
    import torch

    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [modules[n].register_forward_hook(
        lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(out.shape)))
        for n in names]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def pick_layer(model: nn.Module, model_name: str, input_size: list[int], device: str,
               asked: str | None = None) -> tuple[str, tuple[int, ...]]:
    """(module name, its output shape): ``asked`` (``--layer``) checked, else the automatic
    choice of the module docstring."""
    candidates = block_candidates(model, model_name)
    if asked is not None:
        if asked not in dict(model.named_modules()) or not asked:
            raise UsageError("--layer に指定した層がモデルにありません\n"
                             f"The model has no layer named {asked!r}.",
                             f"Use a module name such as: {', '.join(candidates[:6])}.")
        shape = feature_sizes(model, [asked], input_size, device).get(asked)
        if shape is None or len(shape) != 4:
            raise UsageError("--layer には畳み込みの特徴マップを出力する層を指定してください\n"
                             f"Layer {asked!r} does not output a (N, C, H, W) feature map "
                             f"(its output: {shape or 'none in a forward pass'}).",
                             f"Choose a convolutional block, e.g. {candidates[0]}.")
        return asked, shape
    shapes = feature_sizes(model, candidates, input_size, device)
    maps = [(n, shapes[n]) for n in candidates if len(shapes.get(n, ())) == 4]
    if not maps:
        raise UsageError("Grad-CAM の対象層を自動で選べません\n"
                         f"No convolutional block found in {model_name} for Grad-CAM.",
                         "Name one with --layer.")
    for name, shape in maps:
        if min(shape[2:]) >= MIN_MAP_SIDE:
            return name, shape
    return max(maps, key=lambda item: item[1][2] * item[1][3])


@dataclass
class Heatmaps:
    """Grad-CAM of one batch for one class per image."""

    maps: np.ndarray  # (N, H, W) float32 in [0, 1], the input's H x W
    overlays: np.ndarray  # (N, H, W, 3) uint8: the heatmap blended on the image


def seen_images(batch: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """(N, 3, H, W) normalized inputs -> (N, H, W, 3) float32 RGB in [0, 1]: the pixels the
    model saw, after its resize / crop (the normalization undone)."""
    pixels = batch.transpose(0, 2, 3, 1) * np.asarray(std, np.float32) + np.asarray(mean,
                                                                                  np.float32)
    return np.clip(pixels, 0.0, 1.0).astype(np.float32)


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
    inputs = stack_one_size(arrays, kept) if arrays else np.zeros((0, 3, h, w), np.float32)
    return Loaded(kept, inputs, skipped)


class Explainer:
    """The library's GradCAM on one layer of the source's weights; ``close`` removes its
    hooks."""

    def __init__(self, source: ExplainSource, layer: str | None = None) -> None:
        require_grad_cam()
        from pytorch_grad_cam import GradCAM

        self.source = source
        meta = source.context.meta
        self.layer, self.map_shape = pick_layer(source.net, meta.model_name,
                                                list(meta.preprocess.input_size),
                                                source.device, layer)
        target = dict(source.net.named_modules())[self.layer]
        self.cam: Any = GradCAM(model=source.net, target_layers=[target])

    def describe(self) -> str:
        h, w = self.map_shape[2:]
        return f"Grad-CAM on {self.layer} ({h}x{w} map); {self.source.note()}"

    def heatmaps(self, batch: torch.Tensor, classes: list[int],
                 images: np.ndarray) -> Heatmaps:
        """Heatmaps of ``batch`` for ``classes[i]`` of image i; ``images``: (N, H, W, 3)
        float RGB in [0, 1], what the overlays are drawn on."""
        from pytorch_grad_cam.utils.image import show_cam_on_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        maps = self.cam(input_tensor=batch, targets=[ClassifierOutputTarget(c) for c in classes])
        overlays = np.stack([show_cam_on_image(img, m, use_rgb=True)
                             for img, m in zip(images, maps)])
        return Heatmaps(np.asarray(maps, dtype=np.float32), overlays)

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
        with torch.no_grad():
            probs = torch.softmax(self.source.net(batch).float(), dim=1).cpu().numpy()
        k = min(TOP_K, probs.shape[1])
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        per_rank = [self.heatmaps(batch, [int(c) for c in top[:, r]], seen) for r in range(k)]
        wanted = per_rank[0] if target is None else self.heatmaps(
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

    def explain_files(self, paths: list[Path], names: list[str], target: int | None,
                      advance: Callable[[int], None]
                      ) -> Iterator[tuple[list[int], list[ExplainedImage], list[Path]]]:
        """``explain`` over ``paths`` in batches of ``CAM_BATCH``, ``advance`` told after each:
        per batch the indices (into ``paths``) of the readable images, their
        ``ExplainedImage`` and the unreadable files."""
        for start in range(0, len(paths), CAM_BATCH):
            part = paths[start:start + CAM_BATCH]
            loaded = load_images(part, self.source)
            kept = [start + n for n, path in enumerate(part) if path in loaded.paths]
            yield kept, self.explain(loaded, [names[i] for i in kept], target), loaded.skipped
            advance(len(part))

    def close(self) -> None:
        self.cam.activations_and_grads.release()


def _panel(class_names: list[str], cls: int, probs: np.ndarray, maps: Heatmaps,
           i: int) -> Panel:
    return Panel(class_names[cls], float(probs[cls]), maps.overlays[i], maps.maps[i])


@dataclass
class ExplainSource:
    """The weights Grad-CAM runs on, and the context of the model file that was given."""

    model_path: Path  # the file given (.pth, .onnx, .engine)
    weights: Path  # the checkpoint the heatmaps come from
    net: nn.Module
    device: str
    context: ModelContext

    @property
    def class_names(self) -> list[str]:
        return list(self.context.meta.class_names)

    def note(self) -> str:
        """Where the heatmaps come from, for the console and the pictures."""
        if self.weights != self.model_path:
            return (f"heatmaps from the checkpoint {self.weights.name} of the same run "
                    f"({self.model_path.name} itself has no gradients)")
        return f"heatmaps from {self.weights.name}"


def run_checkpoint(model_path: Path, meta: ModelMeta | None) -> Path:
    """The checkpoint ``model_path`` was exported from, in its folder or its run's ``models/``;
    ModelFileError naming the .pth to pass when none is found."""
    from pochitrain.console import warn

    recorded = (meta.source.get("checkpoint") if meta is not None else None) or ""
    digest = meta.source.get("checkpoint_sha256") if meta is not None else None
    run = run_folder_of(model_path)
    folders = list(dict.fromkeys([model_path.resolve().parent, run / "models", run]))
    found = [folder / recorded for folder in folders if recorded and (folder / recorded).is_file()]
    for path in found:
        if digest is None or file_sha256(path) == digest:
            return path
    if found:
        warn(f"{found[0]} is not byte-identical to the checkpoint {model_path.name} was "
             "exported from (sha256 differs): its heatmaps may not match the model's decisions.")
        return found[0]
    in_run = sorted({p.name for folder in folders for p in folder.glob("*.pth")})
    wanted = (f"the checkpoint it was exported from, {recorded}" if recorded else
              "the checkpoint it was exported from")
    listing = f" (checkpoints in this run: {', '.join(in_run)})" if in_run else ""
    raise ModelFileError(
        "Grad-CAM には同じ実行のチェックポイント (.pth) が必要ですが見つかりません\n"
        f"Grad-CAM needs gradients, so it runs on a .pth; {wanted} was not found beside "
        f"{model_path.name} or in {run / 'models'}{listing}.",
        f"Pass {recorded or 'the .pth it was exported from'} as MODEL: "
        f"pochi explain path/to/{recorded or 'best_epochN.pth'} IMAGES")


def open_source(model_path: Path | str, config: Path | str | None = None,
                device: str = "auto") -> ExplainSource:
    """The weights and context for heatmaps of ``model_path`` (see the module docstring)."""
    model_path = Path(model_path)
    read_meta = backend_for(model_path).read_meta
    if read_meta is None:  # a checkpoint: the model itself
        opened = open_model(model_path, config=config, device=device)
        return ExplainSource(model_path, model_path, torch_module(opened), opened.device,
                             opened.context)
    if not model_path.is_file():
        raise ModelFileError("モデルファイルが見つかりません\n"
                             f"Model file not found: {model_path}", "Check the path.")
    meta = read_meta(model_path)
    context = resolve_context(model_path, meta, config)
    weights = run_checkpoint(model_path, meta)
    opened = open_model(weights, device=device)
    if opened.class_names != context.meta.class_names:
        raise ModelFileError(
            "チェックポイントとモデルのクラス名が一致しません\n"
            f"{weights.name} has the classes {opened.class_names[:8]}, {model_path.name} "
            f"{context.meta.class_names[:8]}: they are not the same model.",
            "Pass the .pth that this model was exported from as MODEL.")
    return ExplainSource(model_path, weights, torch_module(opened), opened.device, context)


def torch_module(opened: Model) -> nn.Module:
    """The PyTorch module of a checkpoint opened by the model facade."""
    from pochitrain.inference.torch_runner import TorchRunner

    runner = opened.runner
    assert isinstance(runner, TorchRunner), runner
    return runner.model

"""What a heatmap is computed from: the PyTorch weights and the model's context.

Grad-CAM needs gradients, so it runs on a checkpoint. For a ``.pth`` that is the model itself,
opened by the model facade as ``pochi infer`` opens it. For an ``.onnx`` or a TensorRT engine
it is the checkpoint the file was exported from, found in the same run: export-onnx records
its name and sha256 in the metadata (``source``), and the engine's sidecar keeps them. The
preprocessing and class names stay those of the file given (what ``pochi infer`` uses for
it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pochitrain.errors import ModelFileError
from pochitrain.meta import ModelMeta, file_sha256
from pochitrain.model import Model, backend_for, open_model
from pochitrain.resolve import ModelContext, resolve_context
from pochitrain.workspace import run_folder_of

if TYPE_CHECKING:
    from torch import nn


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


def file_meta(model_path: Path) -> ModelMeta | None:
    """The metadata an .onnx or engine file carries (no runtime is opened)."""
    if backend_for(model_path).runtime == "onnx":
        from pochitrain.onnx.inspect import read_onnx

        return read_onnx(model_path)[0].meta
    from pochitrain.tensorrt.engine_file import read_engine_metadata, sidecar_path

    if not sidecar_path(model_path).is_file():
        return None
    recorded = read_engine_metadata(model_path).get("model")
    return ModelMeta.from_dict(recorded, where=str(model_path)) if recorded else None


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
    backend = backend_for(model_path)
    if backend.runtime == "pytorch":
        opened = open_model(model_path, config=config, device=device)
        return ExplainSource(model_path, model_path, torch_module(opened), opened.device,
                             opened.context)
    if not model_path.is_file():
        raise ModelFileError("モデルファイルが見つかりません\n"
                             f"Model file not found: {model_path}", "Check the path.")
    meta = file_meta(model_path)
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

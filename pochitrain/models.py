"""Model factory (torchvision families) and checkpoints that carry their metadata.

Checkpoints are plain dicts of tensors, strings, numbers and lists, so they load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pochitrain.errors import ConfigError, ModelFileError
from pochitrain.meta import ModelMeta

CHECKPOINT_FORMAT = "pochitrain-checkpoint-v1"

# name -> how to replace the classifier head for num_classes
_HEADS = {
    "resnet": lambda m, n: setattr(m, "fc", nn.Linear(m.fc.in_features, n)),
    "mobilenet_v3": lambda m, n: m.classifier.__setitem__(-1, nn.Linear(m.classifier[-1].in_features, n)),
    "efficientnet": lambda m, n: m.classifier.__setitem__(-1, nn.Linear(m.classifier[-1].in_features, n)),
}

SUPPORTED_MODELS = (
    "resnet18", "resnet34", "resnet50", "resnet101",
    "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "efficientnet_b1",
)


def _family(name: str) -> str:
    for prefix in _HEADS:
        if name.startswith(prefix):
            return prefix
    raise KeyError(name)


def build_model(name: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """A torchvision classifier with ``num_classes`` outputs.

    pretrained=True uses torchvision's ImageNet weights only if they are already in the torch
    hub cache: no download is attempted (machines may be offline).
    """
    import torchvision

    if name not in SUPPORTED_MODELS:
        raise ConfigError(
            f"Unknown model_name {name!r}.", f"Choose one of: {', '.join(SUPPORTED_MODELS)}"
        )
    if not pretrained:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise ConfigError(
            f"pretrained=True but the ImageNet weights for {name} are not on this machine "
            f"(looked for {cached}).",
            f"Download {weights.url} into {cached.parent} on a connected machine, "
            "or set pretrained = False.",
        )
    model = torchvision.models.get_model(name, weights=None)
    model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
    if num_classes != 1000:
        _HEADS[_family(name)](model, num_classes)
    return model


def save_checkpoint(path: Path, model: nn.Module, meta: ModelMeta,
                    extra: dict[str, Any] | None = None) -> None:
    """Write atomically: a crash never leaves a truncated checkpoint."""
    from pochitrain.workspace import atomic_path

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "meta": meta.to_dict(), "model_state_dict": state,
               **(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: Path | str) -> tuple[dict[str, Any], ModelMeta]:
    """Load a pochitrain checkpoint dict (weights_only) and its metadata."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"Checkpoint not found: {path}",
                             "Pass the .pth written by 'pochi train' (work_dirs/*/models/).")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for non-checkpoint files
        raise ModelFileError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}).",
            "Pass a .pth written by 'pochi train'.",
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(
            f"{path} is not a pochitrain checkpoint (no pochitrain metadata).",
            "Pass a .pth written by 'pochi train'; for other models export ONNX yourself and "
            "use 'pochi infer model.onnx -c config.py'.",
        )
    return payload, ModelMeta.from_dict(payload["meta"], where=str(path))


def load_model(path: Path | str, device: str = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Rebuild the model of a checkpoint, in eval mode on ``device``."""
    payload, meta = read_checkpoint(path)
    model = build_model(meta.model_name, meta.num_classes, pretrained=False)
    model.load_state_dict(payload["model_state_dict"])
    return model.to(device).eval(), meta

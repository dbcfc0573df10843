"""Model factory (torchvision families) and checkpoints that carry their metadata.

Checkpoints are plain dicts of tensors, strings, numbers and lists, so they load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pochitrain.errors import ConfigError, ModelFileError, PochiError
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

    pretrained=True loads torchvision's ImageNet weights from the torch hub cache
    (``$TORCH_HOME/hub/checkpoints``), downloading them there first (with progress) when
    missing; offline, the error names the URL and the exact file to place by hand.
    """
    from pochitrain.fastimport import import_torchvision

    torchvision = import_torchvision()

    if name not in SUPPORTED_MODELS:
        raise ConfigError(
            f"Unknown model_name {name!r}.", f"Choose one of: {', '.join(SUPPORTED_MODELS)}"
        )
    if not pretrained:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    cached = pretrained_weights_file(name, weights.url)
    model = torchvision.models.get_model(name, weights=None)
    try:
        model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001 - a damaged cache file fails in many ways
        raise WeightsDownloadError(
            f"事前学習済み重みを読み込めません / The cached ImageNet weights {cached} cannot be "
            f"loaded ({type(exc).__name__}).",
            f"Delete {cached} so that it is downloaded again from {weights.url}.") from None
    if num_classes != 1000:
        _HEADS[_family(name)](model, num_classes)
    return model


class WeightsDownloadError(PochiError):
    """Pretrained weights are not cached and cannot be downloaded (offline), or are damaged."""


def pretrained_weights_file(name: str, url: str) -> Path:
    """The torch hub cache file of ``url``, downloaded (atomically, with progress) if absent."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if cached.is_file():
        return cached
    from pochitrain.console import info

    info(f"ImageNet の事前学習済み重みをダウンロードします / Downloading the ImageNet weights for "
         f"{name}: {url} -> {cached}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), progress=True)
    except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, socket errors, ...
        reason = getattr(exc, "reason", None) or exc
        raise WeightsDownloadError(
            f"事前学習済み重みをダウンロードできません (オフライン?) / pretrained = True but the "
            f"ImageNet weights for {name} could not be downloaded ({reason}).\n"
            f"URL: {url}\nCache file: {cached}",
            f"On a machine with internet access download {url} and copy it to exactly {cached} "
            "(TORCH_HOME moves the cache), or set pretrained = False.") from None
    return cached


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
        from pochitrain.legacy import as_original

        original = as_original(payload)
        if original is not None:
            raise OriginalCheckpointError(original, path)
        raise ModelFileError(
            f"{path} is not a pochitrain checkpoint (no pochitrain metadata).",
            "Pass a .pth written by 'pochi train'; for other models export ONNX yourself and "
            "use 'pochi infer model.onnx -c config.py'.",
        )
    return payload, ModelMeta.from_dict(payload["meta"], where=str(path))


class OriginalCheckpointError(ModelFileError):
    """A checkpoint of the original pochitrain (no metadata): see ``pochitrain.legacy``."""

    def __init__(self, checkpoint: Any, path: Path) -> None:
        super().__init__(f"{path} is a checkpoint of the original pochitrain (no metadata).",
                         "Pass -c/--config-path with its training config.")
        self.checkpoint = checkpoint


def load_model(path: Path | str, device: str = "cpu", *, config: Path | str | None = None,
               verb: str = "infer", model_name: str | None = None,
               num_classes: int | None = None) -> tuple[nn.Module, ModelMeta]:
    """Rebuild the model of a checkpoint, in eval mode on ``device``.

    ModelFileError when the metadata (model name, number of classes) does not fit the weights.
    A checkpoint of the original pochitrain takes its metadata from ``config`` or the config
    the original would have found for ``verb`` (``legacy.load_original``).
    """
    try:
        payload, meta = read_checkpoint(path)
    except OriginalCheckpointError as exc:
        from pochitrain.legacy import load_original

        option = "-c/--config" if verb == "export-onnx" else "-c/--config-path"
        model, meta, _ = load_original(Path(path), exc.checkpoint, config=config, verb=verb,
                                       model_name=model_name, num_classes=num_classes,
                                       option=option)
        return model.to(device), meta
    try:
        model = build_model(meta.model_name, meta.num_classes, pretrained=False)
    except ConfigError as exc:
        raise ModelFileError(f"{path}: {exc.message}", _EDITED_REMEDY) from None
    state = payload.get("model_state_dict")
    problem = weights_mismatch(model, state)
    if problem is None:
        try:
            model.load_state_dict(state)  # type: ignore[arg-type]
        except (RuntimeError, TypeError, ValueError) as exc:
            problem = str(exc).strip().splitlines()[-1].strip()[:300]
    if problem is not None:
        raise ModelFileError(
            f"The weights in {path} do not match its metadata ({meta.model_name}, "
            f"{meta.num_classes} classes): {problem}.", _EDITED_REMEDY)
    return model.to(device).eval(), meta


_EDITED_REMEDY = ("The checkpoint was edited or damaged: use the .pth exactly as 'pochi train' "
                  "wrote it (weights and metadata are saved together), or train again.")


def weights_mismatch(model: nn.Module, state: Any) -> str | None:
    """A one-line summary of missing / unexpected / wrongly shaped weights, or None."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "model_state_dict is not a dict of tensors"
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [k for k, v in expected.items() if k in state and state[k].shape != v.shape]
    parts = []
    if resized:
        k = resized[0]
        parts.append(f"{k} has shape {tuple(state[k].shape)} in the file but "
                     f"{tuple(expected[k].shape)} in the model"
                     + (f" (and {len(resized) - 1} more)" if len(resized) > 1 else ""))
    for names, what in ((missing, "missing from the file"), (unexpected, "not in the model")):
        if names:
            more = f" and {len(names) - 2} more" if len(names) > 2 else ""
            parts.append(f"{len(names)} weight(s) {what} ({', '.join(names[:2])}{more})")
    return "; ".join(parts) or None

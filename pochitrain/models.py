"""Model registry and factory: torchvision classifier families, ImageNet weights.

A leaf: checkpoint files (ours and the original's) are ``pochitrain.checkpoint``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pochitrain.errors import ConfigError, PochiError

if TYPE_CHECKING:
    from torch import nn

SUPPORTED_MODELS = (
    "resnet18", "resnet34", "resnet50", "resnet101",
    "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "efficientnet_b1",
)
FAMILIES = ("resnet", "mobilenet_v3", "efficientnet")


class WeightsDownloadError(PochiError):
    """Pretrained weights are not cached and cannot be downloaded (offline), or are damaged."""


def _family(name: str) -> str:
    for prefix in FAMILIES:
        if name.startswith(prefix):
            return prefix
    raise KeyError(name)


def _replace_head(model: nn.Module, name: str, num_classes: int) -> None:
    """Swap the classifier's last layer for a fresh one with ``num_classes`` outputs."""
    from torch import nn

    if _family(name) == "resnet":
        fc: nn.Linear = model.fc  # type: ignore[assignment]
        model.fc = nn.Linear(fc.in_features, num_classes)
    else:  # mobilenet_v3 and efficientnet end their classifier with a Linear
        classifier: nn.Sequential = model.classifier  # type: ignore[assignment]
        last: nn.Linear = classifier[-1]  # type: ignore[assignment]
        classifier[-1] = nn.Linear(last.in_features, num_classes)


def build_model(name: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """A torchvision classifier with ``num_classes`` outputs.

    pretrained=True loads torchvision's ImageNet weights from the torch hub cache
    (``$TORCH_HOME/hub/checkpoints``), downloading them there first (with progress) when
    missing; offline, the error names the URL and the exact file to place by hand.
    """
    import torch

    from pochitrain.fastimport import import_torchvision

    torchvision = import_torchvision()

    if name not in SUPPORTED_MODELS:
        raise ConfigError(
            "不明な model_name が指定されています\n"
            f"Unknown model_name {name!r}.", f"Choose one of: {', '.join(SUPPORTED_MODELS)}"
        )
    if not pretrained:
        return _usual_bn_momentum(
            torchvision.models.get_model(name, weights=None, num_classes=num_classes))
    weights = torchvision.models.get_model_weights(name).DEFAULT
    cached = pretrained_weights_file(name, weights.url)
    model = torchvision.models.get_model(name, weights=None)
    try:
        model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001 - a damaged cache file fails in many ways
        raise WeightsDownloadError(
            "事前学習済み重みを読み込めません\n"
            f"The cached ImageNet weights {cached} cannot be "
            f"loaded ({type(exc).__name__}).",
            f"Delete {cached} so that it is downloaded again from {weights.url}.") from None
    if num_classes != 1000:
        _replace_head(model, name, num_classes)
    return _usual_bn_momentum(model)


def _usual_bn_momentum(model: nn.Module) -> nn.Module:
    """BatchNorm's running statistics follow each batch at PyTorch's usual rate (0.1).

    torchvision builds mobilenet_v3 with 0.01, tuned to ImageNet's long schedules: after the
    few hundred steps of a small data set its running statistics still lag the weights, and
    in eval mode the model answers near-constant logits (docs/benchmarks.md, "Training").
    The rate is not saved in checkpoints."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    return model


def pretrained_weights_file(name: str, url: str) -> Path:
    """The torch hub cache file of ``url``, downloaded (atomically, with progress) if absent."""
    import torch

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

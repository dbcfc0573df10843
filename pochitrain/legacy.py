"""Files of the original pochitrain (v1.8.3): checkpoints without metadata, and its config
auto-detection rules.

Its checkpoints hold ``{"epoch", "model_state_dict", "optimizer_state_dict", "best_accuracy"}``
(or a bare state dict) whose keys carry a ``model.`` prefix, and no class names, config or
preprocessing. Those come from the training config, found as the original found it
(``-c`` first): ``pochi infer`` ``<model>/../../config.py``; ``export-onnx``
``<model>/../config.py`` then ``<model>/../../config.py``. Class names are the training
folder's class sub-folders (the original's ``num_classes`` was overwritten with their count).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pochitrain.errors import ModelFileError
from pochitrain.meta import ModelMeta

PREFIX = "model."
NO_CONFIG_JA = "設定ファイルが見つかりません"


@dataclass
class OriginalCheckpoint:
    """A loaded original-format checkpoint."""

    state_dict: dict[str, Any]  # prefix removed
    epoch: int | None
    best_accuracy: float | None

    @property
    def num_classes(self) -> int | None:
        """Rows of the classifier's last weight (fc / classifier.N)."""
        heads = [k for k, v in self.state_dict.items()
                 if k.endswith(".weight") and getattr(v, "ndim", 0) == 2]
        return int(self.state_dict[heads[-1]].shape[0]) if heads else None


def as_original(payload: Any) -> OriginalCheckpoint | None:
    """The checkpoint as the original wrote it, or None when it is not in that format."""
    import torch

    if not isinstance(payload, dict) or "format" in payload:
        return None
    state = payload.get("model_state_dict", payload)
    if (not isinstance(state, dict) or not state
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                       for k, v in state.items())):
        return None
    if all(k.startswith(PREFIX) for k in state):
        state = {k[len(PREFIX):]: v for k, v in state.items()}
    epoch = payload.get("epoch") if "model_state_dict" in payload else None
    best = payload.get("best_accuracy") if "model_state_dict" in payload else None
    return OriginalCheckpoint(state, epoch if isinstance(epoch, int) else None,
                              float(best) if isinstance(best, (int, float)) else None)


def original_config_candidates(model_path: Path, verb: str) -> list[Path]:
    """Where the original looked for the config of a model file (reference 2.3)."""
    model_path = Path(model_path).expanduser().resolve()
    if verb == "export-onnx":
        return [model_path.parent / "config.py", model_path.parent.parent / "config.py"]
    return [model_path.parent.parent / "config.py"]


def find_original_config(model_path: Path, config: Path | str | None, verb: str,
                         option: str = "-c/--config-path") -> Path:
    """``config`` when given, else the first existing candidate; ConfigError naming the files
    looked for and the option to pass."""
    from pochitrain.errors import ConfigError

    if config is not None:
        return Path(config)
    candidates = original_config_candidates(model_path, verb)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise ConfigError(
        f"{NO_CONFIG_JA}: {looked}\n{Path(model_path).name} is a checkpoint of the original "
        "pochitrain (no class names or preprocessing inside), and no config was found. "
        f"Looked for: {looked}.",
        f"Pass {option} CONFIG.py (the training config: model_name, train_data_root and "
        "val_transform are read from it).")


def meta_from_config(config_path: Path, model_path: Path) -> tuple[ModelMeta, Any]:
    """(metadata, settings) built from a training config: class names from run.json or the
    training folder, preprocessing from val_transform."""
    from pochitrain.config import load_config, preprocess_from_settings
    from pochitrain.resolve import class_names_from_config

    settings = load_config(config_path)
    pre = preprocess_from_settings(settings)
    names = class_names_from_config(settings, config_path)
    return ModelMeta(names, pre, model_name=settings.model_name,
                     source={"original_checkpoint": model_path.name}), settings


def load_original(model_path: Path, checkpoint: OriginalCheckpoint, *,
                  config: Path | str | None, verb: str = "infer",
                  model_name: str | None = None, num_classes: int | None = None,
                  option: str = "-c/--config-path") -> tuple[Any, ModelMeta, Path]:
    """(model in eval mode on the CPU, metadata, config path) for an original checkpoint.

    ``model_name`` / ``num_classes`` given on the command line win over the config (the
    original let the config's model_name override an explicit --model-name: a bug).
    """
    from pochitrain.console import info
    from pochitrain.models import build_model, weights_mismatch

    config_path = find_original_config(model_path, config, verb, option)
    meta, settings = meta_from_config(config_path, model_path)
    name = model_name or settings.model_name
    n_file = checkpoint.num_classes
    if num_classes is not None and n_file is not None and num_classes != n_file:
        raise ModelFileError(
            f"--num-classes {num_classes} but the checkpoint {model_path.name} has "
            f"{n_file} outputs.", f"Use --num-classes {n_file}.")
    if n_file is not None and n_file != meta.num_classes:
        raise ModelFileError(
            f"The checkpoint {model_path.name} has {n_file} classes but its config "
            f"{config_path} gives {meta.num_classes} ({', '.join(meta.class_names[:10])}"
            f"{' ...' if meta.num_classes > 10 else ''}).\n"
            "チェックポイントのクラス数が config と一致しません.",
            "Pass -c with the config this checkpoint was trained with (its train_data_root "
            "must hold the same class folders).")
    model = build_model(name, meta.num_classes, pretrained=False)
    problem = weights_mismatch(model, checkpoint.state_dict)
    if problem is None:
        model.load_state_dict(checkpoint.state_dict)
    else:
        raise ModelFileError(
            f"The weights in {model_path} do not fit {name} with {meta.num_classes} classes: "
            f"{problem}.", "Pass --model-name (or fix model_name in the config) to match the "
            "network the checkpoint was trained as.")
    meta.model_name = name
    extra = "".join(f", {k} {v}" for k, v in (("epoch", checkpoint.epoch),
                                               ("best_accuracy", checkpoint.best_accuracy))
                    if v is not None)
    info(f"元の pochitrain のチェックポイント / Original pochitrain checkpoint ({name}{extra}): "
         f"class names and preprocessing from {config_path}")
    return model.eval(), meta, config_path

"""The one metadata resolver: what a model file needs (class names, preprocessing) and where
it came from.

Order: the model file's own metadata (checkpoint dict, ONNX ``metadata_props``, engine
sidecar); a config given with ``-c`` overrides its preprocessing; without metadata, the
config (``-c``, else ``config.py`` of the run the model belongs to) supplies the
preprocessing (``val_transform``) and the class names (the run's ``run.json``, else
``train_data_root``). Class names never come from the data being inferred.

Used by ``pochi infer`` (all runtimes), ``export-onnx``, ``pochi convert`` and INT8
calibration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pochitrain.config import NO_VAL_TRANSFORM_JA
from pochitrain.errors import ConfigError
from pochitrain.meta import ModelMeta
from pochitrain.workspace import find_config_near, read_run_json


class NoPreprocessingError(ConfigError):
    """Neither the model file nor a config says how to preprocess images."""


@dataclass
class Resolved:
    meta: ModelMeta
    preprocess_from: str  # "model metadata" | "val_transform of config <path>"
    config_path: Path | None  # the config that was read (given or found), if any
    settings: Any | None  # its validated Settings


def config_for(model_path: Path, config: Path | str | None) -> Path | None:
    """``-c`` when given, else the run's config.py beside the model (or None)."""
    return Path(config) if config is not None else find_config_near(model_path)


def class_names_from_config(settings: Any, config_path: Path) -> list[str]:
    """The run's run.json class names, else the class folders of train_data_root."""
    names = (read_run_json(config_path.parent) or {}).get("class_names")
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    train_root = getattr(settings, "train_data_root", None)
    if train_root:
        from pochitrain.data import scan_image_folder

        return scan_image_folder(train_root, "training data folder").classes
    raise ConfigError(
        f"Cannot find the class names for this model: no metadata in the model file, no "
        f"run.json beside {config_path} and no train_data_root in it.",
        "Use a model exported by pochitrain, or set train_data_root in the config.",
    )


def resolve_meta(model_path: Path | str, model_meta: ModelMeta | None,
                 config: Path | str | None = None, *, need_class_names: bool = True) -> Resolved:
    """See the module docstring. ``need_class_names=False`` (INT8 calibration) accepts a
    config without them (the result then has no class names)."""
    from pochitrain.config import load_config, preprocess_from_settings

    model_path = Path(model_path)
    if model_meta is not None and config is None:
        return Resolved(model_meta, "model metadata", None, None)
    config_path = config_for(model_path, config)
    settings = load_config(config_path) if config_path is not None else None
    if settings is None or getattr(settings, "val_transform", None) is None:
        why = (f"config {config_path} has no val_transform" if config_path is not None
               else f"no config was given (-c) or found beside {model_path.name}")
        raise NoPreprocessingError(
            f"{NO_VAL_TRANSFORM_JA}\n{model_path.name} carries no pochitrain metadata "
            f"(preprocessing, class names) and {why}.",
            "--config-path で val_transform を含む config を指定してください / Pass "
            "-c/--config-path with the training config (its val_transform is the "
            "preprocessing), or re-export the model with this version of pochitrain.",
        )
    assert config_path is not None
    preprocess = preprocess_from_settings(settings)
    source = f"val_transform of config {config_path}"
    if model_meta is not None:
        meta = ModelMeta(model_meta.class_names, preprocess, model_meta.model_name,
                         model_meta.source)
    else:
        try:
            names = class_names_from_config(settings, config_path)
        except ConfigError:
            if need_class_names:
                raise
            names = []
        meta = ModelMeta(names, preprocess, model_name=str(getattr(settings, "model_name", "?")))
        from pochitrain.console import info

        info(f"{model_path.name} にメタデータがありません / {model_path.name} carries no "
             f"pochitrain metadata: class names and preprocessing from {config_path}")
    return Resolved(meta, source, config_path, settings)


def _recorded_setting(config_path: Path, key: str) -> tuple[bool, Any]:
    """(found, value) of a setting from the run.json beside a run's config copy: reading the
    record costs nothing, executing the config imports torch and torchvision (seconds). A
    config edited after the run (newer than its run.json) is read instead."""
    record = config_path.parent / "run.json"
    try:
        if config_path.stat().st_mtime_ns > record.stat().st_mtime_ns:
            return False, None
    except OSError:
        return False, None
    settings = (read_run_json(config_path.parent) or {}).get("settings")
    if isinstance(settings, dict) and key in settings:
        return True, settings[key]
    return False, None


def find_val_data(model_path: Path | str) -> Path | None:
    """The val_data_root of the run a model file belongs to (config beside the run), if any."""
    from pochitrain.config import load_config

    found = find_config_near(model_path)
    if found is None:
        return None
    recorded, root = _recorded_setting(found, "val_data_root")
    if not recorded:
        root = getattr(load_config(found), "val_data_root", None)
    return Path(root) if root else None


def confusion_style(model_path: Path | str, config: Path | str | None) -> dict[str, Any] | None:
    """The confusion_matrix_config of the config given (-c) or found beside the model's run,
    None without one (or when that config cannot be read: the picture keeps its defaults)."""
    from pochitrain.config import load_config

    path = config_for(Path(model_path), config)
    if path is None:
        return None
    if config is None:
        recorded, style = _recorded_setting(path, "confusion_matrix_config")
        if recorded:
            return style if isinstance(style, dict) else None
    try:
        return getattr(load_config(path), "confusion_matrix_config", None)
    except ConfigError:
        return None

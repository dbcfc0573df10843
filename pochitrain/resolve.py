"""The one resolver of a model's context: what a model file needs besides its weights, and
where each part came from.

Order: the model file's own metadata (checkpoint dict, ONNX ``metadata_props``, engine
sidecar); a config given with ``-c`` overrides its preprocessing; without metadata, the
config (``-c``, else ``config.py`` of the run the model belongs to) supplies the
preprocessing (``val_transform``) and the class names (the run's ``run.json``, else
``train_data_root``). Class names never come from the data being inferred.

The config is executed at most once per ``RunConfig`` (it imports torch and torchvision);
settings recorded in the run's ``run.json`` are read from there while the config copy is
unedited, so ``infer-onnx`` never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pochitrain.config import NO_VAL_TRANSFORM_JA, class_names_from_config
from pochitrain.errors import ConfigError, PochiError
from pochitrain.meta import ModelMeta
from pochitrain.workspace import find_config_near, read_run_json

if TYPE_CHECKING:
    from pochitrain.config import Settings


class NoPreprocessingError(ConfigError):
    """Neither the model file nor a config says how to preprocess images."""


@dataclass(eq=False)
class RunConfig:
    """The config that goes with a model: ``-c`` when given, else ``config.py`` of its run."""

    path: Path | None
    given: bool

    @classmethod
    def for_model(cls, model_path: Path | str, config: Path | str | None = None) -> RunConfig:
        if config is not None:
            return cls(Path(config), True)
        return cls(find_config_near(model_path), False)

    @cached_property
    def settings(self) -> Settings | None:
        """The validated settings (the config executed once), None without a config."""
        from pochitrain.config import load_config

        return load_config(self.path, scheduler_trial=False) if self.path is not None else None

    def settings_for(self, path: Path) -> Settings:
        """The settings of the config file ``path``: this config's, read once, when it is the
        same file; else that file read now."""
        from pochitrain.config import load_config

        if self.path is not None and Path(path).resolve() == self.path.resolve():
            return self.settings or load_config(path, scheduler_trial=False)
        return load_config(path, scheduler_trial=False)

    @cached_property
    def recorded(self) -> dict[str, Any]:
        """Settings from the run.json beside a found config copy that has not been edited
        since the run ({} otherwise: the config itself is then read)."""
        if self.given or self.path is None:
            return {}
        record = self.path.parent / "run.json"
        try:
            if self.path.stat().st_mtime_ns > record.stat().st_mtime_ns:
                return {}
        except OSError:
            return {}
        settings = (read_run_json(self.path.parent) or {}).get("settings")
        return settings if isinstance(settings, dict) else {}

    def setting(self, key: str) -> Any:
        """One setting: the run's record when it has it, else the config, None without one."""
        if key in self.recorded:
            return self.recorded[key]
        return getattr(self.settings, key, None)

    def describe(self) -> str:
        return f"config {self.path}" if self.path is not None else "no config"


@dataclass
class ModelContext:
    """A model's resolved context: metadata and the run settings that go with it."""

    meta: ModelMeta
    config: RunConfig
    sources: dict[str, str] = field(default_factory=dict)  # where each part came from

    @property
    def preprocess_from(self) -> str:
        return self.sources["preprocess"]

    @cached_property
    def data_root(self) -> Path | None:
        """The run's val_data_root (``pochi infer`` without ``--data``), if any."""
        root = self.config.setting("val_data_root")
        self.sources["data_root"] = self.config.describe()
        if root and not Path(root).exists() and "val_data_root" not in self.config.recorded:
            settings = self.config.settings  # found nowhere: name both places tried
            if settings is not None:
                settings.require_paths("val_data_root")
        return Path(root) if root else None

    @cached_property
    def confusion_style(self) -> dict[str, Any] | None:
        """The config's confusion_matrix_config; None without one, or when the config cannot
        be read (the picture then keeps its defaults)."""
        try:
            style = self.config.setting("confusion_matrix_config")
        except ConfigError:
            return None
        return style if isinstance(style, dict) else None

    @cached_property
    def benchmark_env_name(self) -> str | None:
        """The config's benchmark_env_name (``--benchmark-json``), if any."""
        try:
            name = self.config.setting("benchmark_env_name")
        except PochiError:
            return None
        return str(name) if name else None


def resolve_context(model_path: Path | str, model_meta: ModelMeta | None,
                    config: Path | str | RunConfig | None = None, *,
                    need_class_names: bool = True) -> ModelContext:
    """See the module docstring. ``need_class_names=False`` (INT8 calibration) accepts a
    config without them (the result then has no class names)."""
    model_path = Path(model_path)
    run_config = config if isinstance(config, RunConfig) else RunConfig.for_model(model_path,
                                                                                   config)
    if model_meta is not None and not run_config.given:
        return ModelContext(model_meta, run_config, {"preprocess": "model metadata",
                                                     "class_names": "model metadata"})
    settings = run_config.settings
    if settings is None or settings.val_transform is None:
        raise _no_preprocessing(model_path, run_config, model_meta is not None)
    assert run_config.path is not None
    from pochitrain.config import preprocess_from_settings

    preprocess = preprocess_from_settings(settings)
    sources = {"preprocess": f"val_transform of config {run_config.path}",
               "class_names": "model metadata"}
    if model_meta is not None:
        meta = ModelMeta(model_meta.class_names, preprocess, model_meta.model_name,
                         model_meta.source)
        return ModelContext(meta, run_config, sources)
    try:
        names = class_names_from_config(settings, run_config.path)
    except ConfigError:
        if need_class_names:
            raise
        names = []
    sources["class_names"] = run_config.describe()
    meta = ModelMeta(names, preprocess, model_name=settings.model_name)
    from pochitrain.console import info

    info(f"{model_path.name} にメタデータがありません / {model_path.name} carries no "
         f"pochitrain metadata: class names and preprocessing from {run_config.path}")
    return ModelContext(meta, run_config, sources)


def _no_preprocessing(model_path: Path, run_config: RunConfig,
                      has_meta: bool = False) -> NoPreprocessingError:
    if has_meta:  # -c given: its val_transform would replace the model's own preprocessing
        return NoPreprocessingError(
            f"{NO_VAL_TRANSFORM_JA}\n-c/--config-path {run_config.path} has no val_transform, "
            f"and a config given with -c replaces the preprocessing stored in "
            f"{model_path.name}.",
            "--config-path を外すとモデル内の前処理を使います / Drop -c/--config-path to use "
            "the model's own preprocessing, or pass a config that defines val_transform.")
    why = (f"config {run_config.path} has no val_transform" if run_config.path is not None
           else f"no config was given (-c) or found beside {model_path.name}")
    return NoPreprocessingError(
        f"{NO_VAL_TRANSFORM_JA}\n{model_path.name} carries no pochitrain metadata "
        f"(preprocessing, class names) and {why}.",
        "--config-path で val_transform を含む config を指定してください / Pass "
        "-c/--config-path with the training config (its val_transform is the "
        "preprocessing), or re-export the model with this version of pochitrain.",
    )


def find_val_data(model_path: Path | str) -> Path | None:
    """The val_data_root of the run a model file belongs to (config beside the run), if any."""
    root = RunConfig.for_model(model_path).setting("val_data_root")
    return Path(root) if root else None

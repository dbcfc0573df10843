"""The ``optuna['search_space']`` of a config: what each key means for a training run.

Every searchable key becomes a config override of the trial's training, validated like a
config file, so nothing suggested is silently dropped: config keys, scheduler arguments
(``scheduler_params.<name>`` or the original's ``scheduler_<name>``) and layer-wise rates
(``layer_rates.<group>``); docs/readme_optimize.md lists them. ``check_space`` tries every
choice and both ends of every range before the first trial, so a bad value fails at once
with the key that holds it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from pochitrain.config_checks import did_you_mean
from pochitrain.errors import ConfigError

# Config keys a trial may not change: they are the experiment, not its hyperparameters.
FIXED_KEYS = {"train_data_root", "val_data_root", "work_dir", "optuna", "epochs",
              "train_transform", "val_transform", "num_classes", "device", "model_name",
              "input_size", "benchmark_env_name"}
LAYER_GROUPS = ("layer1", "layer2", "layer3", "layer4", "conv1", "bn1", "fc", "other")


class Target(NamedTuple):
    """Where a suggested value goes: ("key", None) | ("scheduler_params", arg) |
    ("layer", group)."""
    kind: str
    arg: str | None


@dataclass
class Param:
    name: str  # as written in search_space
    kind: str  # float | int | categorical
    spec: dict[str, Any]
    target: Target

    def suggest(self, trial: Any) -> Any:
        s = self.spec
        if self.kind == "float":
            return trial.suggest_float(self.name, float(s["low"]), float(s["high"]),
                                       log=bool(s.get("log", False)), step=s.get("step"))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(s["low"]), int(s["high"]),
                                     step=int(s.get("step") or 1), log=bool(s.get("log", False)))
        return trial.suggest_categorical(self.name, list(s["choices"]))

    def candidates(self) -> list[Any]:
        """The values checked before the first trial."""
        if self.kind == "categorical":
            return list(self.spec["choices"])
        return [self.spec["low"], self.spec["high"]]


def parse_space(space: dict[str, Any] | None) -> list[Param]:
    if not space:
        raise ConfigError("search_space が空です\n"
                          "optuna['search_space'] is empty: there is nothing to optimize.",
                          "Add at least one key, e.g. optuna = {'search_space': "
                          "{'learning_rate': {'type': 'float', 'low': 1e-4, 'high': 1e-2, "
                          "'log': True}}}.")
    from pochitrain.config import KEYS as keys

    params: list[Param] = []
    for name, spec in space.items():
        where = f"optuna['search_space'][{name!r}]"
        if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
            raise ConfigError("探索範囲には type (float, int, categorical) を持つ dict を指定してください\n"
                              f"{where} must be a dict with 'type': float, int or categorical.",
                              "Example: {'type': 'float', 'low': 1e-4, 'high': 1e-2, 'log': True}")
        if spec["type"] == "categorical" and not spec.get("choices"):
            raise ConfigError("choices が空です\n"
                              f"{where} has no choices.", "Give 'choices': [a, b, ...].")
        if spec["type"] != "categorical" and ("low" not in spec or "high" not in spec):
            raise ConfigError("low と high を指定してください\n"
                              f"{where} needs 'low' and 'high'.",
                              "Example: {'type': 'int', 'low': 8, 'high': 64}")
        params.append(Param(name, spec["type"], dict(spec), _target(name, keys, where)))
    return params


def _target(name: str, keys: tuple[str, ...], where: str) -> Target:
    if name.startswith("scheduler_params."):
        return Target("scheduler_params", name.split(".", 1)[1])
    if name.startswith(("layer_rates.", "layer_wise_lr.")):
        group = name.split(".", 1)[1]
        if group not in LAYER_GROUPS:
            raise ConfigError("不明なレイヤーグループです\n"
                              f"{where}: unknown layer group {group!r}.",
                              f"Groups: {', '.join(LAYER_GROUPS)}.")
        if "layer_wise_lr_config" not in keys:
            raise ConfigError("レイヤーごとの学習率には対応していません\n"
                              f"{where}: this pochitrain has no layer-wise learning rates.",
                              "Remove the key.")
        return Target("layer", group)
    if name in FIXED_KEYS:
        raise ConfigError("試行で変えられるハイパーパラメータではありません\n"
                          f"{where}: {name} is not a hyperparameter a trial can change.",
                          "optuna_epochs sets the epochs of a trial; the data, model and "
                          "transforms stay those of the config.")
    if name in keys:
        return Target(name, None)
    if name.startswith("scheduler_"):
        return Target("scheduler_params", name[len("scheduler_"):])
    hint = did_you_mean(name, [k for k in keys if k not in FIXED_KEYS])
    raise ConfigError("config のキーではありません\n"
                      f"{where}: {name!r} is not a config key.{hint}",
                      "Search config keys (learning_rate, optimizer, batch_size, weight_decay, "
                      "scheduler, ...), scheduler_params.<arg> / scheduler_<arg>, or "
                      "layer_rates.<group>.")


def overrides_for(params: list[Param], values: dict[str, Any], settings: Any,
                  epochs: int) -> dict[str, Any]:
    """Config overrides of one trial (``values``: param name -> suggested value)."""
    out: dict[str, Any] = {"epochs": epochs}
    sched_args: dict[str, Any] = {}
    rates: dict[str, Any] = {}
    for p in params:
        kind, arg = p.target
        if kind == "scheduler_params":
            sched_args[str(arg)] = values[p.name]
        elif kind == "layer":
            rates[str(arg)] = values[p.name]
        else:
            out[kind] = values[p.name]
    scheduler = out.get("scheduler", settings.scheduler)
    if sched_args or "scheduler" in out:
        merged = {**dict(settings.scheduler_params or {}), **sched_args}
        out["scheduler_params"] = _accepted(scheduler, merged)
    if rates:
        cfg = dict(getattr(settings, "layer_wise_lr_config", None) or {})
        cfg["layer_rates"] = {**dict(cfg.get("layer_rates") or {}), **rates}
        out["enable_layer_wise_lr"] = True
        out["layer_wise_lr_config"] = cfg
    return out


def _accepted(scheduler: str | None, params: dict[str, Any]) -> dict[str, Any]:
    """The arguments ``scheduler`` takes (a trial that picked another scheduler drops the rest)."""
    if scheduler is None:
        return {}
    import torch

    cls = getattr(torch.optim.lr_scheduler, str(scheduler), None)
    if cls is None:
        return params  # the config check names the unknown scheduler
    names = set(inspect.signature(cls.__init__).parameters)
    return {k: v for k, v in params.items() if k in names}


def check_space(config: Path, params: list[Param], settings: Any, epochs: int) -> None:
    """Validate every choice and both range ends as the trial's config would (ConfigError
    naming the search-space key and value)."""
    from pochitrain.config import load_config

    first = {p.name: p.candidates()[0] for p in params}
    seen: set[str] = set()
    for p in params:
        for value in p.candidates():
            values = {**first, p.name: value}
            overrides = overrides_for(params, values, settings, epochs)
            key = repr(sorted(overrides.items()))
            if key in seen:
                continue
            seen.add(key)
            try:
                load_config(config, overrides)
            except ConfigError as exc:
                raise ConfigError(
                    "search_space の値が config として正しくありません\n"
                    f"optuna['search_space'][{p.name!r}]: the value {value!r} is not valid "
                    f"for the config:\n{exc.message}",
                    exc.remedy or "Fix the search space.") from None


def warn_unused_learning_rate(params: list[Param], settings: Any) -> None:
    """Warn (once, before the first trial) when the searched ``learning_rate`` sets no
    parameter group's rate: every trial trains with layer-wise rates covering every group."""
    kinds = {p.target.kind for p in params}
    if "learning_rate" not in kinds:
        return
    searched = {str(p.target.arg) for p in params if p.target.kind == "layer"}
    if not searched and ("enable_layer_wise_lr" in kinds or not settings.enable_layer_wise_lr):
        return  # some trial (or every one) trains without layer-wise rates
    rates = dict((settings.layer_wise_lr_config or {}).get("layer_rates") or {})
    if not model_groups(settings.model_name) <= set(rates) | searched:
        return
    from pochitrain.console import warn

    warn("search_space の learning_rate は効きません: layer-wise の学習率 (layer_rates) が "
         f"{settings.model_name} のすべてのパラメータグループを指定しています。\n"
         "The searched learning_rate cannot matter: the layer-wise rates (layer_rates) set "
         f"every parameter group of {settings.model_name}. Remove it from search_space, or "
         "search layer_rates.<group> instead.")


def model_groups(model_name: str) -> set[str]:
    """The layer-wise parameter groups that hold a trainable parameter of ``model_name``."""
    import torch

    from pochitrain.models import build_model
    from pochitrain.training.optim import layer_group

    with torch.device("meta"):  # the structure only: no memory, no initialisation cost
        model = build_model(model_name, 2)
    return {layer_group(name) for name, p in model.named_parameters() if p.requires_grad}

"""Checks for the config keys of the original pochitrain (v1.8.3) that this project accepts.

Each key keeps the original's meaning (reference section 2.2), but a typo the original ignored
is named here. Every ``check_*`` returns the value with its defaults or raises a ConfigError.
"""

from __future__ import annotations

import re
from typing import Any

from pochitrain.config_checks import (
    check_choice,
    check_float,
    check_int,
    did_you_mean,
    is_int,
    is_number,
    type_error,
)
from pochitrain.errors import ConfigError

# The original's ResNetLayerGrouper: first substring match in this order, else "other".
LAYER_GROUPS = ("layer1", "layer2", "layer3", "layer4", "conv1", "bn1", "fc", "other")
AGGREGATIONS = ("median", "mean", "max", "rms")
GRADIENT_DEFAULTS: dict[str, Any] = {"record_frequency": 1,
                                     "exclude_patterns": ["fc\\.", "\\.bias"],
                                     "group_by_block": True, "aggregation_method": "median"}
CONFUSION_DEFAULTS: dict[str, Any] = {"title": "Confusion Matrix", "xlabel": "Predicted Label",
                                      "ylabel": "True Label", "fontsize": 14,
                                      "title_fontsize": 16, "label_fontsize": 12,
                                      "figsize": (8, 6), "cmap": "Blues"}
OPTUNA_DEFAULTS: dict[str, Any] = {"study_name": "pochitrain_optimization",
                                   "direction": "maximize", "n_trials": 20, "n_jobs": 1,
                                   "sampler": "TPESampler", "pruner": "MedianPruner",
                                   "optuna_epochs": 10, "storage": None, "search_space": {},
                                   # ours, beside the original's keys (see readme_optimize):
                                   "metric": None, "sampler_params": None,
                                   "pruner_params": None}
SEARCH_TYPES = ("float", "int", "categorical")


def _unknown(where: str, key: Any, allowed: tuple[str, ...] | list[str]) -> ConfigError:
    return ConfigError("不明なキーがあります\n"
                       f"{where} has an unknown key {key!r}.{did_you_mean(key, allowed)}",
                       f"{where} keys: {', '.join(allowed)}.")


def _dict(key: str, value: Any, example: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise type_error(key, value, f"None or a dict like {example}")
    return value


def _known(where: str, value: dict[str, Any], allowed: tuple[str, ...] | list[str]) -> None:
    for k in value:
        if k not in allowed:
            raise _unknown(where, k, allowed)


def check_optional_bool(key: str, value: Any) -> bool | None:
    """None (pochitrain chooses automatically) or True / False (overrides that choice)."""
    if value is None or isinstance(value, bool):
        return value
    raise type_error(key, value, "True, False or None (None: chosen automatically)")


def check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise type_error(key, value, "True or False")
    return value


def check_mean_std(key: str, value: Any) -> list[float] | None:
    """Informational, as in the original (the pipelines read val_transform's Normalize)."""
    if value is None:
        return None
    ok = (isinstance(value, (list, tuple)) and len(value) == 3
          and all(is_number(v) for v in value))
    if not ok or (key == "std" and min(value) <= 0):
        raise type_error(key, value, "three numbers, one per RGB channel"
                         + (" (each > 0)" if key == "std" else ""))
    return [float(v) for v in value]


def check_layer_wise_lr(enabled: bool, value: Any) -> dict[str, Any]:
    """``{"layer_rates": {group: lr}, "graph_config": {"use_log_scale": bool}}``; a group
    matching no parameter is refused when the optimizer is built."""
    example = "{'layer_rates': {'layer4': 1e-3, 'fc': 1e-2}, 'graph_config': {'use_log_scale': True}}"
    cfg = {} if value is None else dict(_dict("layer_wise_lr_config", value, example))
    _known("layer_wise_lr_config", cfg, ("layer_rates", "graph_config"))
    rates = cfg.get("layer_rates") or {}
    rates = _dict("layer_wise_lr_config['layer_rates']", rates, "{'fc': 0.01}")
    for group, lr in rates.items():
        if group not in LAYER_GROUPS:
            raise ConfigError(
                "layer_rates に不明なグループがあります\n"
                f"layer_wise_lr_config['layer_rates'] has an unknown group {group!r}."
                f"{did_you_mean(group, LAYER_GROUPS)}",
                f"Groups (matched in this order, as in the original pochitrain): "
                f"{', '.join(LAYER_GROUPS)}.")
        check_float(f"layer_wise_lr_config['layer_rates'][{group!r}]", lr, 0.0, strict=True)
    if enabled and not rates:
        raise ConfigError("layer_wise_lr_config に layer_rates を指定してください\n"
                          "enable_layer_wise_lr = True but layer_wise_lr_config has no "
                          "layer_rates.",
                          f"Give at least one group rate, e.g. layer_wise_lr_config = {example}, "
                          "or set enable_layer_wise_lr = False.")
    graph = cfg.get("graph_config") or {}
    graph = _dict("layer_wise_lr_config['graph_config']", graph, "{'use_log_scale': True}")
    _known("layer_wise_lr_config['graph_config']", graph, ("use_log_scale",))
    log = check_bool("layer_wise_lr_config['graph_config']['use_log_scale']",
                     graph.get("use_log_scale", True))
    return {"layer_rates": {g: float(v) for g, v in rates.items()},
            "graph_config": {"use_log_scale": log}}


def check_gradient_tracking(value: Any) -> dict[str, Any]:
    where = "gradient_tracking_config"
    cfg = {} if value is None else dict(_dict(where, value, "{'record_frequency': 1}"))
    _known(where, cfg, tuple(GRADIENT_DEFAULTS))
    out = {**GRADIENT_DEFAULTS, **cfg}
    out["record_frequency"] = check_int(f"{where}['record_frequency']",
                                        out["record_frequency"], 1)
    patterns = out["exclude_patterns"] or []
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise type_error(f"{where}['exclude_patterns']", patterns,
                         "a list of regular expressions, e.g. ['fc\\\\.', '\\\\.bias']")
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            raise ConfigError("exclude_patterns の正規表現が正しくありません\n"
                              f"{where}['exclude_patterns'] has an invalid regular expression "
                              f"{p!r}: {exc}.", "Fix the pattern (Python re syntax).") from None
    out["exclude_patterns"] = list(patterns)
    out["group_by_block"] = check_bool(f"{where}['group_by_block']", out["group_by_block"])
    out["aggregation_method"] = check_choice(f"{where}['aggregation_method']",
                                             out["aggregation_method"], AGGREGATIONS)
    return out


def check_confusion_matrix_config(value: Any) -> dict[str, Any] | None:
    where = "confusion_matrix_config"
    if value is None:
        return None
    cfg = dict(_dict(where, value, "{'title': 'Confusion Matrix', 'cmap': 'Blues'}"))
    _known(where, cfg, tuple(CONFUSION_DEFAULTS))
    out = {**CONFUSION_DEFAULTS, **cfg}
    for key in ("title", "xlabel", "ylabel", "cmap"):
        if not isinstance(out[key], str):
            raise type_error(f"{where}[{key!r}]", out[key], "a string")
    for key in ("fontsize", "title_fontsize", "label_fontsize"):
        out[key] = check_float(f"{where}[{key!r}]", out[key], 0.0, strict=True)
    size = out["figsize"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(is_number(v) and v > 0 for v in size)):
        raise type_error(f"{where}['figsize']", size, "(width, height) in inches, e.g. (8, 6)")
    out["figsize"] = (float(size[0]), float(size[1]))
    import matplotlib

    if out["cmap"] not in matplotlib.colormaps:
        raise ConfigError("cmap が matplotlib のカラーマップではありません\n"
                          f"{where}['cmap'] is not a matplotlib colormap: {out['cmap']!r}."
                          f"{did_you_mean(out['cmap'], matplotlib.colormaps)}",
                          "Use a name such as 'Blues', 'viridis' or 'YlOrRd'.")
    return out


def _check_search_space(space: Any) -> dict[str, Any]:
    where = "optuna['search_space']"
    space = _dict(where, space, "{'learning_rate': {'type': 'float', 'low': 1e-4, 'high': 1e-2}}")
    for name, spec in space.items():
        w = f"{where}[{name!r}]"
        spec = _dict(w, spec, "{'type': 'float', 'low': 1e-4, 'high': 1e-2, 'log': True}")
        kind = check_choice(f"{w}['type']", spec.get("type"), SEARCH_TYPES)
        if kind == "categorical":
            _known(w, spec, ("type", "choices"))
            if not isinstance(spec.get("choices"), (list, tuple)) or not spec["choices"]:
                raise type_error(f"{w}['choices']", spec.get("choices"), "a non-empty list")
            continue
        _known(w, spec, ("type", "low", "high", "log", "step"))
        _check_range(w, kind, spec)
    return dict(space)


def _check_range(w: str, kind: str, spec: dict[str, Any]) -> None:
    """A float / int range: the types first, then what Optuna would refuse in the first
    trial (a log range from 0 or below, ``step`` with ``log``)."""
    expected = "a whole number" if kind == "int" else "a number"
    number = is_int if kind == "int" else is_number
    for key in ("low", "high"):
        if not number(spec.get(key)):
            raise type_error(f"{w}[{key!r}]", spec.get(key), expected)
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    if step is not None and (not number(step) or step <= 0):
        raise type_error(f"{w}['step']", step, f"{expected} > 0, or None")
    if not isinstance(log, bool):
        raise type_error(f"{w}['log']", log, "True or False")
    if low > high:
        raise ConfigError("low は high 以下にしてください\n"
                          f"{w} needs low <= high ({kind}s); got low={low!r}, high={high!r}.",
                          f"Example: {{'type': {kind!r}, 'low': 1, 'high': 10}}")
    if log and low <= 0:
        raise ConfigError("log の範囲は 0 より大きい low が必要です\n"
                          f"{w}: a log range needs low > 0; got low={low!r}.",
                          "Raise low above 0, or set 'log': False.")
    if log and step is not None and (kind == "float" or step != 1):
        raise ConfigError("step と log は同時に指定できません\n"
                          f"{w}: 'step' and 'log': True cannot be used together (values are "
                          "drawn either on a log scale or in steps).",
                          "Remove 'step', or set 'log': False.")


def check_optuna(value: Any) -> dict[str, Any] | None:
    """The original's nested ``optuna`` dict (for ``pochi optimize``), defaults filled in."""
    if value is None:
        return None
    cfg = dict(_dict("optuna", value, "{'n_trials': 20, 'search_space': {...}}"))
    _known("optuna", cfg, tuple(OPTUNA_DEFAULTS))
    out = {**OPTUNA_DEFAULTS, **cfg}
    for key in ("study_name", "sampler"):
        if not isinstance(out[key], str):
            raise type_error(f"optuna[{key!r}]", out[key], "a string")
    out["direction"] = check_choice("optuna['direction']", out["direction"],
                                    ("maximize", "minimize"))
    for key in ("n_trials", "n_jobs", "optuna_epochs"):
        out[key] = check_int(f"optuna[{key!r}]", out[key], 1)
    for key in ("pruner", "storage"):
        if out[key] is not None and not isinstance(out[key], str):
            raise type_error(f"optuna[{key!r}]", out[key], "a string or None")
    out["search_space"] = _check_search_space(out["search_space"] or {})
    return out

"""Validation of single config values (used by :mod:`pochitrain.config`).

Each ``check_*`` returns the normalised value or raises a ConfigError naming the key, what was
given and what is accepted. Transforms are tried on a small test image and schedulers are built
on a throwaway optimizer, so a config that would fail in epoch 1 is refused at load time.
"""

from __future__ import annotations

import difflib
import math
import re
import types
from typing import Any

from pochitrain.errors import ConfigError

OPTIMIZERS = ("SGD", "Adam", "AdamW")
SCHEDULERS = ("StepLR", "MultiStepLR", "CosineAnnealingLR", "ExponentialLR", "LinearLR")
EARLY_STOPPING_MONITORS = ("val_accuracy", "val_loss")
MIXED_PRECISIONS = ("auto", "bf16", "fp16", "off")
TRANSFORM_KEYS = ("train_transform", "val_transform")
VAL_TRANSFORM_EXAMPLE = ("transforms.Compose([transforms.Resize((H, W)), transforms.ToTensor(), "
                         "transforms.Normalize(mean, std)])")
# Steps after which a torchvision pipeline yields a tensor (checked when the test image fails).
_TENSOR_STEPS = ("ToTensor", "PILToTensor", "ToImage", "ToDtype", "ConvertImageDtype")
_PROBE_SIZE = 256  # test image edge: large enough for the usual crops


def type_error(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(
        "config の値の型が正しくありません\n"
        f"config key {key!r} must be {expected}; got {value!r} ({type(value).__name__}).",
        f"Set {key} to {expected}.",
    )


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def did_you_mean(word: Any, choices: Any, cutoff: float = 0.6) -> str:
    """The " Did you mean 'x'?" hint for the closest of ``choices``, or an empty string."""
    near = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=cutoff)
    return f" Did you mean {near[0]!r}?" if near else ""


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if isinstance(value, str):
        lookup = {c.lower(): c for c in choices}
        if value.lower() in lookup:
            return lookup[value.lower()]
    raise ConfigError("config のキーに対応していない値が指定されています\n"
                      f"config key {key!r} has an unsupported value {value!r}."
                      f"{did_you_mean(value, choices)}",
                      f"Allowed values for {key}: {', '.join(choices)}.")


INT_LIMIT = 2**31 - 1  # larger counts overflow torch's and numpy's integers


def check_int(key: str, value: Any, minimum: int, allow_none: bool = False,
              maximum: int = INT_LIMIT) -> int | None:
    if value is None and allow_none:
        return None
    if not is_int(value) or value < minimum or value > maximum:
        expected = (f"a whole number >= {minimum}" if not is_int(value) or value < minimum
                    else f"a whole number from {minimum} to {maximum}")
        raise type_error(key, value, expected + (" or None" if allow_none else ""))
    return int(value)


def check_float(key: str, value: Any, minimum: float, strict: bool) -> float:
    if not is_number(value) or not math.isfinite(value) or (value <= minimum if strict else value < minimum):
        raise type_error(key, value, f"a finite number {'>' if strict else '>='} {minimum}")
    return float(value)


def check_transform(key: str, value: Any) -> Any:
    """A transform from a PIL RGB image to a float (3, H, W) tensor: any callable for
    train_transform; data for val_transform, which is stored with the exported model."""
    if value is None:
        return None
    if isinstance(value, type):
        raise ConfigError(
            "config のキーに変換のオブジェクトではなくクラスが指定されています\n"
            f"config key {key!r} is the class {value.__name__}, not a transform object.",
            f"Create the transform with parentheses, e.g. {key} = {VAL_TRANSFORM_EXAMPLE}.")
    if not callable(value):
        raise type_error(key, value, "a torchvision transform (a single transform or "
                         "transforms.Compose([...])) or None")
    if key == "val_transform" and isinstance(value, (types.FunctionType, types.MethodType,
                                                     types.BuiltinFunctionType)):
        raise ConfigError(
            "val_transform に関数は使えません\n"
            f"val_transform is a function ({getattr(value, '__name__', value)!r}); "
            "a function cannot be stored with the model for ONNX / TensorRT inference.",
            f"Set val_transform = {VAL_TRANSFORM_EXAMPLE} (accepted steps: Resize, CenterCrop, "
            "ToTensor, Normalize). Functions are fine in train_transform.")
    _probe_transform(key, value)
    return value


def _probe_transform(key: str, transform: Any) -> None:
    """Apply ``transform`` to a gray test image: it must give a float (3, H, W) tensor."""
    import torch
    from PIL import Image

    try:
        out = transform(Image.new("RGB", (_PROBE_SIZE, _PROBE_SIZE), (128, 110, 90)))
    except Exception:  # noqa: BLE001 - e.g. a crop larger than the test image: look inside
        steps = getattr(transform, "transforms", None)
        if isinstance(steps, (list, tuple)) and not any(
                type(step).__name__ in _TENSOR_STEPS for step in steps):
            raise _no_tensor(key, "has no ToTensor step") from None
        return
    if (isinstance(out, torch.Tensor) and out.is_floating_point() and out.ndim == 3
            and out.shape[0] == 3):
        return
    if isinstance(out, torch.Tensor):
        got = f"a {str(out.dtype).replace('torch.', '')} tensor of shape {tuple(out.shape)}"
    else:
        got = f"{type(out).__module__}.{type(out).__name__}"
    raise _no_tensor(key, f"returned {got} for a test RGB image")


def _no_tensor(key: str, what: str) -> ConfigError:
    return ConfigError(
        "変換の結果が (3, H, W) の float テンソルになりません\n"
        f"{key} does not turn an image into a float tensor of shape (3, H, W): it {what}. "
        "Training would fail at its first batch.",
        f"End {key} with transforms.ToTensor() (then transforms.Normalize(mean, std)), e.g. "
        f"{VAL_TRANSFORM_EXAMPLE}. PILToTensor gives uint8: use ToTensor instead.")


def check_scheduler(value: Any, params: Any, epochs: int,
                    trial: bool = True) -> tuple[str | None, dict[str, Any]]:
    """Scheduler name and its keyword arguments, checked by name, type and (``trial``) a run
    on a throwaway optimizer."""
    if params is None:
        params = {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise type_error("scheduler_params", params, "a dict of keyword arguments, e.g. "
                         "{'step_size': 10, 'gamma': 0.1}")
    if value is None:
        return None, dict(params)
    name = check_choice("scheduler", value, SCHEDULERS)
    import inspect

    import torch

    cls = getattr(torch.optim.lr_scheduler, name)
    sig = inspect.signature(cls.__init__)
    accepted = [p for p in sig.parameters if p not in ("self", "optimizer", "last_epoch",
                                                       "verbose")]
    params = dict(params)
    if name == "CosineAnnealingLR":
        params.setdefault("T_max", epochs)
    for key in params:
        if key not in accepted:
            raise ConfigError("scheduler が受け付けない scheduler_params があります\n"
                              f"scheduler_params has {key!r}, which {name} does not take."
                              f"{did_you_mean(key, accepted)}",
                              f"{name} takes: {', '.join(accepted)}.")
    required = [p.name for p in sig.parameters.values()
                if p.name in accepted and p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [p for p in required if p not in params]
    if missing:
        raise ConfigError("scheduler に必要な scheduler_params がありません\n"
                          f"scheduler {name} needs scheduler_params {', '.join(missing)}.",
                          f"Example: scheduler_params = {{{', '.join(repr(m) + ': ...' for m in missing)}}}")
    for key, v in params.items():
        _check_scheduler_value(key, v)
    if trial:
        _try_scheduler(cls, name, params)
    return name, params


def _check_scheduler_value(key: str, v: Any) -> None:
    """Every argument of the supported schedulers is a number (milestones: a list of them)."""
    if key == "milestones":
        if isinstance(v, (list, tuple)) and all(is_int(m) for m in v):
            return
        expected, example = "a list of whole numbers (epochs)", "[10, 20]"
    elif is_number(v):
        return
    else:
        expected, example = "a number", "10"
        if isinstance(v, str):
            try:
                example = repr(int(v) if v.strip().lstrip("-").isdigit() else float(v))
            except ValueError:
                pass
    raise ConfigError(
        "scheduler_params の値の型が正しくありません\n"
        f"scheduler_params[{key!r}] must be {expected}; got {v!r} ({type(v).__name__}).",
        f"Write it without quotes, e.g. scheduler_params = {{{key!r}: {example}, ...}}.")


def _try_scheduler(cls: Any, name: str, params: dict[str, Any]) -> None:
    """Build the scheduler on a throwaway optimizer and step it twice (values like T_max=0
    only fail when the learning rate is computed)."""
    import warnings

    import torch

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scheduler = cls(optimizer, **params)
            for _ in range(2):
                optimizer.step()
                scheduler.step()
                if not math.isfinite(optimizer.param_groups[0]["lr"]):
                    raise ValueError("the learning rate it gives is not a finite number")
    except (TypeError, ValueError, ArithmeticError, KeyError, IndexError) as exc:
        raise ConfigError(
            "scheduler_params で scheduler を作成できません\n"
            f"scheduler {name} fails with scheduler_params = {params!r}: "
            f"{type(exc).__name__}: {exc}",
            f"Fix the scheduler_params values (see torch.optim.lr_scheduler.{name}).") from None


def check_training_batch(batch_size: int, processes: int = 1,
                         model_name: str = "the model") -> None:
    """Every supported network has BatchNorm layers, which cannot train on one image per step
    ("Expected more than 1 value per channel"): refuse a per-process batch of one. A last
    batch of one is dropped by the training loaders instead."""
    if batch_size // max(processes, 1) >= 2:
        return
    if processes > 1:
        raise ConfigError(
            "1 プロセスあたりのバッチが 1 枚になり BatchNorm で学習できません\n"
            f"batch_size = {batch_size} over {processes} processes gives each process one "
            f"image per step, which the BatchNorm layers of {model_name} cannot train on.",
            f"Set batch_size = {2 * processes} or more in the config (it is the global batch: "
            f"at least 2 images per process), or use fewer processes.")
    raise ConfigError(
        "batch_size = 1 では BatchNorm を含むモデルを学習できません\n"
        f"batch_size = {batch_size} gives each training step one image, which the BatchNorm "
        f"layers of {model_name} cannot train on.",
        "Set batch_size = 2 or more in the config (e.g. 16 or 32).")


ORIGINAL_ES_DEFAULTS = {"enabled": False, "patience": 10, "min_delta": 0.0,
                        "monitor": "val_accuracy"}


def check_early_stopping(value: Any) -> dict[str, Any] | None:
    """None / False (off), or a dict in one of two forms: pochitrain's (accuracy as a
    fraction) or the original's, recognised by its ``enabled`` key (default False, patience
    10, accuracy ``min_delta`` in percentage points, converted here). A dict without
    ``enabled`` whose accuracy min_delta is 1 or more mixes the forms and is refused."""
    if value is None or value is False:
        return None
    if not isinstance(value, dict):
        raise type_error("early_stopping", value, "None or a dict like "
                          "{'patience': 5, 'min_delta': 0.0, 'monitor': 'val_accuracy'}")
    allowed = ("patience", "min_delta", "monitor", "enabled")
    for key in value:
        if key not in allowed:
            raise ConfigError("early_stopping に不明なキーがあります\n"
                              f"early_stopping has an unknown key {key!r}."
                              f"{did_you_mean(key, allowed)}",
                              f"early_stopping keys: {', '.join(allowed)}.")
    original = "enabled" in value
    defaults = ORIGINAL_ES_DEFAULTS if original else {"patience": 5, "min_delta": 0.0,
                                                      "monitor": "val_accuracy"}
    merged = {**defaults, **value}
    if original and not isinstance(merged["enabled"], bool):
        raise type_error("early_stopping['enabled']", merged["enabled"], "True or False")
    delta = check_float("early_stopping['min_delta']", merged["min_delta"], 0.0, strict=False)
    out: dict[str, Any] = {
        "patience": check_int("early_stopping['patience']", merged["patience"], 1),
        "min_delta": delta,
        "monitor": check_choice("early_stopping['monitor']", merged["monitor"],
                                 EARLY_STOPPING_MONITORS),
    }
    accuracy = out["monitor"] == "val_accuracy"
    if not original and accuracy and delta >= 1.0:
        raise ConfigError(
            "early_stopping に 2 つの形式が混在しています\n"
            f"early_stopping mixes two forms: min_delta = {delta:g} for val_accuracy "
            "is in percentage points (the original pochitrain's form, which has the key "
            "'enabled'), but without 'enabled' the dict is read in pochitrain's form, where "
            "accuracy is a fraction (0-1) and an improvement of 1 or more is impossible.\n"
            "early_stopping が2つの形式を混在しています (min_delta はパーセントポイント, "
            "'enabled' がありません).",
            f"Add 'enabled': True to keep the original's meaning (min_delta "
            f"{delta:g} percentage points), or write min_delta = "
            f"{delta / 100:g} (a fraction) in pochitrain's form.")
    if original:
        if not merged["enabled"]:
            return None
        if accuracy:  # percentage points -> fraction of 1
            out["min_delta"] = delta / 100.0
    return out


def check_input_size(value: Any) -> list[int] | None:
    if value is None:
        return None
    if is_int(value):
        value = [value, value]
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(is_int(v) and v > 0 for v in value)):
        raise type_error("input_size", value, "[HEIGHT, WIDTH] (two positive whole numbers)")
    return [int(v) for v in value]


def check_device(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value.strip()):
        raise ConfigError("device に対応していない値が指定されています\n"
                          f"config key 'device' has an unsupported value {value!r}.",
                          "Allowed values for device: 'auto' (CUDA when available), 'cpu', "
                          "'cuda', 'cuda:N'.")
    return value.strip()


def check_class_weights(cw: Any) -> list[float] | str | None:
    if cw is None or cw == "balanced":
        return cw
    if (not isinstance(cw, (list, tuple)) or not cw
            or not all(is_number(v) and v >= 0 for v in cw)):
        raise type_error("class_weights", cw, "None, 'balanced' (inverse class frequency) or "
                          "a list of non-negative numbers, one per class in sorted "
                          "class-folder order")
    return [float(v) for v in cw]


def check_val_split(value: Any, val_data_root: Any) -> float | None:
    if value is None:
        return None
    if not is_number(value) or not 0 < value < 1:
        raise type_error("val_split", value, "None or a fraction between 0 and 1, e.g. 0.2")
    if val_data_root is not None:
        raise ConfigError("val_split と val_data_root は同時に指定できません\n"
                          f"val_split = {value} and val_data_root = {val_data_root!r} are both "
                          "set.", "Keep one: val_split takes the validation images from "
                          "train_data_root; val_data_root names a folder of its own.")
    return float(value)

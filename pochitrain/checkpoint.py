"""Checkpoint files: ours (weights with their metadata) and the original pochitrain's.

Our checkpoints are plain dicts of tensors, strings, numbers and lists (``format`` is
``CHECKPOINT_FORMAT``, the metadata under ``meta``), so they load with
``torch.load(weights_only=True)``.

The original pochitrain (v1.8.3) wrote ``{"epoch", "model_state_dict", "optimizer_state_dict",
"best_accuracy"}`` (or a bare state dict) with ``model.``-prefixed keys and no metadata: that
comes from the training config, found where the original looked (``find_original_config``).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pochitrain.errors import ConfigError, ModelFileError
from pochitrain.meta import ModelMeta

if TYPE_CHECKING:
    from torch import nn

    from pochitrain.config import Settings

CHECKPOINT_FORMAT = "pochitrain-checkpoint-v1"
SettingsOf = Callable[[Path], "Settings"]  # reads a config file (once, where the caller caches)
PREFIX = "model."
NO_CONFIG_JA = "設定ファイルが見つかりません"
EDITED_REMEDY = ("The checkpoint was edited or damaged: use the .pth exactly as 'pochi train' "
                 "wrote it (weights and metadata are saved together), or train again.")


def snapshot(value: Any) -> Any:
    """``value`` with every tensor copied to the CPU and every dict, list and tuple rebuilt:
    the training that goes on (weights, optimizer state, metric rows) leaves the copy as it
    was, so it can be written from another thread."""
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach()
        return value.clone() if value.device.type == "cpu" else value.cpu()
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if type(value) in (list, tuple):  # a named tuple is kept as it is
        return type(value)(snapshot(v) for v in value)
    return value


def checkpoint_payload(model: nn.Module, meta: ModelMeta,
                       extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint file holds, as a ``snapshot``: weights, metadata, ``extra`` keys."""
    return {"format": CHECKPOINT_FORMAT, "meta": meta.to_dict(),
            "model_state_dict": snapshot(model.state_dict()), **snapshot(extra or {})}


def write_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a crash never leaves a truncated checkpoint."""
    import torch

    from pochitrain.workspace import atomic_write_bytes

    buffer = io.BytesIO()  # torch's own file writer reports a full disk without its errno
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def save_checkpoint(path: Path, model: nn.Module, meta: ModelMeta,
                    extra: dict[str, Any] | None = None) -> None:
    write_checkpoint(path, checkpoint_payload(model, meta, extra))


def checkpoint_file(path: Path | str) -> Path:
    """``path`` as a Path; ModelFileError when there is no such file. Cheap: commands call it
    before importing torch."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError("チェックポイントが見つかりません\n"
                             f"Checkpoint not found: {path}",
                             "Pass the .pth written by 'pochi train' (work_dirs/*/models/).")
    return path


def read_checkpoint(path: Path | str) -> tuple[dict[str, Any], ModelMeta]:
    """Load a pochitrain checkpoint dict (weights_only) and its metadata."""
    path = checkpoint_file(path)
    import torch

    try:
        with warnings.catch_warnings():  # a pickle that is not a checkpoint: the error says it
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for non-checkpoint files
        raise ModelFileError(
            "PyTorch のチェックポイントとして読み込めません\n"
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}).",
            "Pass a .pth written by 'pochi train'.",
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        original = as_original(payload)
        if original is not None:
            raise OriginalCheckpointError(original, path)
        raise ModelFileError(
            "pochitrain のチェックポイントではありません\n"
            f"{path} is not a pochitrain checkpoint (no pochitrain metadata).",
            "Pass a .pth written by 'pochi train'; for other models export ONNX yourself and "
            "use 'pochi infer model.onnx -c config.py'.",
        )
    return payload, ModelMeta.from_dict(payload["meta"], where=str(path))


def load_model(path: Path | str, device: str = "cpu", *, config: Path | str | None = None,
               verb: str = "infer", model_name: str | None = None,
               num_classes: int | None = None,
               settings_of: SettingsOf | None = None) -> tuple[nn.Module, ModelMeta]:
    """Rebuild the model of a checkpoint, in eval mode on ``device``. An original checkpoint
    takes its metadata from ``config`` or the one found for ``verb``, read with ``settings_of``
    (the model facade passes the config it already holds, so it is executed once)."""
    try:
        payload, meta = read_checkpoint(path)
    except OriginalCheckpointError as exc:
        model, meta = load_original(Path(path), exc.checkpoint, config=config, verb=verb,
                                    model_name=model_name, num_classes=num_classes,
                                    settings_of=settings_of)
        return model.to(device), meta
    try:
        model, problem = model_with_weights(meta.model_name, meta.num_classes,
                                            payload.get("model_state_dict"))
    except ConfigError as exc:
        raise ModelFileError(f"{path}: {exc.message}", EDITED_REMEDY) from None
    if problem is not None:
        raise ModelFileError(
            "チェックポイントの重みがメタデータと一致しません\n"
            f"The weights in {path} do not match its metadata ({meta.model_name}, "
            f"{meta.num_classes} classes): {problem}.", EDITED_REMEDY)
    return model.to(device).eval(), meta


def model_with_weights(name: str, num_classes: int,
                       state: Any) -> tuple[nn.Module, str | None]:
    """(the network holding the checkpoint's weights, or why they do not fit); built without
    its random initialisation, as every weight is then overwritten or the file refused."""
    from pochitrain.models import build_model

    with init_skipped():
        model = build_model(name, num_classes, pretrained=False)
    problem = weights_mismatch(model, state)
    if problem is None:
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, ValueError) as exc:
            problem = str(exc).strip().splitlines()[-1].strip()[:300]
    return model, problem


def init_skipped() -> Any:
    """A torch function mode (for a ``with`` block, this thread only) in which
    ``torch.nn.init``'s random draws leave the tensor as it is: drawing the weights of a
    network about to receive a checkpoint's costs more than reading the file. Buffers and
    constant initialisations are made as usual."""
    import torch
    from torch.overrides import TorchFunctionMode

    skipped = {torch.nn.init.uniform_, torch.nn.init.normal_, torch.nn.init.kaiming_uniform_,
               torch.Tensor.uniform_, torch.Tensor.normal_}

    class InitSkipped(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if func in skipped:  # nn.init passes its tensor by keyword
                return args[0] if args else kwargs["tensor"]
            return func(*args, **kwargs)

    return InitSkipped()


def weights_mismatch(model: nn.Module, state: Any) -> str | None:
    """A one-line summary of missing / unexpected / wrongly shaped weights, or None."""
    import torch

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


# The original pochitrain's checkpoints.


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


class OriginalCheckpointError(ModelFileError):
    """A checkpoint of the original pochitrain (no metadata): see :func:`load_original`."""

    def __init__(self, checkpoint: OriginalCheckpoint, path: Path) -> None:
        super().__init__("元の pochitrain のチェックポイントです (メタデータがありません)\n"
                         f"{path} is a checkpoint of the original pochitrain (no metadata).",
                         "Pass -c/--config-path with its training config.")
        self.checkpoint = checkpoint


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


def find_original_config(model_path: Path, config: Path | str | None, verb: str) -> Path:
    """``config`` when given, else the first config where the original looked (reference
    2.3); ConfigError naming the files looked for and the option to pass."""
    if config is not None:
        return Path(config)
    folder = Path(model_path).expanduser().resolve().parent
    candidates = [folder.parent / "config.py"]
    option = "-c/--config-path"
    if verb == "export-onnx":
        candidates.insert(0, folder / "config.py")
        option = "-c/--config"
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


def meta_from_config(config_path: Path, model_path: Path,
                     settings_of: SettingsOf | None = None) -> tuple[ModelMeta, Settings]:
    """(metadata, settings) built from a training config: class names from run.json or the
    training folder, preprocessing from val_transform."""
    from pochitrain.config import class_names_from_config, load_config, preprocess_from_settings

    settings = (settings_of(config_path) if settings_of is not None
                else load_config(config_path, scheduler_trial=False))
    pre = preprocess_from_settings(settings)
    names = class_names_from_config(settings, config_path)
    return ModelMeta(names, pre, model_name=settings.model_name,
                     source={"original_checkpoint": model_path.name}), settings


def load_original(model_path: Path, checkpoint: OriginalCheckpoint, *,
                  config: Path | str | None, verb: str = "infer",
                  model_name: str | None = None, num_classes: int | None = None,
                  settings_of: SettingsOf | None = None) -> tuple[nn.Module, ModelMeta]:
    """(model in eval mode on the CPU, metadata) for an original checkpoint; ``model_name`` /
    ``num_classes`` from the command line win over the config."""
    from pochitrain.console import info

    config_path = find_original_config(model_path, config, verb)
    meta, settings = meta_from_config(config_path, model_path, settings_of)
    name = model_name or settings.model_name
    _check_class_count(model_path, config_path, checkpoint.num_classes, num_classes, meta)
    model, problem = model_with_weights(name, meta.num_classes, checkpoint.state_dict)
    if problem is not None:
        raise ModelFileError(
            "チェックポイントの重みがモデルに合いません\n"
            f"The weights in {model_path} do not fit {name} with {meta.num_classes} classes: "
            f"{problem}.", "Pass --model-name (or fix model_name in the config) to match the "
            "network the checkpoint was trained as.")
    meta.model_name = name
    extra = "".join(f", {k} {v}" for k, v in (("epoch", checkpoint.epoch),
                                               ("best_accuracy", checkpoint.best_accuracy))
                    if v is not None)
    info(f"元の pochitrain のチェックポイント / Original pochitrain checkpoint ({name}{extra}): "
         f"class names and preprocessing from {config_path}")
    return model.eval(), meta


def _check_class_count(model_path: Path, config_path: Path, n_file: int | None,
                       num_classes: int | None, meta: ModelMeta) -> None:
    """ModelFileError when --num-classes or the config disagrees with the checkpoint's head."""
    if num_classes is not None and n_file is not None and num_classes != n_file:
        raise ModelFileError(
            "--num-classes がチェックポイントの出力数と一致しません\n"
            f"--num-classes {num_classes} but the checkpoint {model_path.name} has "
            f"{n_file} outputs.", f"Use --num-classes {n_file}.")
    if n_file is not None and n_file != meta.num_classes:
        raise ModelFileError(
            "チェックポイントのクラス数が config と一致しません\n"
            f"The checkpoint {model_path.name} has {n_file} classes but its config "
            f"{config_path} gives {meta.num_classes} ({', '.join(meta.class_names[:10])}"
            f"{' ...' if meta.num_classes > 10 else ''}).",
            "Pass -c with the config this checkpoint was trained with (its train_data_root "
            "must hold the same class folders).")

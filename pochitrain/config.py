"""Training config files: a Python file of module-level variables -> validated ``Settings``.

The config is executed as Python (so transforms are real torchvision objects). Names starting
with ``_`` and imported modules, functions and classes are ignored (except the transforms);
every other module-level name must be a known key. Relative paths: :mod:`config_paths`.
``device`` is only validated here; :func:`resolve_device`, which training calls, resolves it,
so inference may read a config written on a GPU machine on a CPU-only one.
"""

from __future__ import annotations

import re
import runpy
import traceback
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pochitrain.arguments import path_argument
from pochitrain.config_checks import (
    MIXED_PRECISIONS,
    OPTIMIZERS,
    TRANSFORM_KEYS,
    check_choice,
    check_class_weights,
    check_device,
    check_early_stopping,
    check_float,
    check_input_size,
    check_int,
    check_scheduler,
    check_transform,
    check_val_split,
    did_you_mean,
    type_error,
)
from pochitrain.config_paths import (
    PATH_KEYS,
    ResolvedPath,
    missing_path_error,
    resolve_config_paths,
)
from pochitrain.cuda_env import prepare_cuda_env
from pochitrain.errors import BackendMissingError, ConfigError, DataError, UsageError
from pochitrain.workspace import config_paths_base, read_run_json

if TYPE_CHECKING:
    from pochitrain.preprocess import Preprocess

NO_VAL_TRANSFORM_JA = "configにval_transformが設定されていません"


@dataclass
class Settings:
    """A validated config. Paths are absolute (resolved against the config's folder)."""

    model_name: str = "resnet18"
    num_classes: int | None = None  # None: inferred from the train folder's class sub-folders
    device: str = "auto"  # as written; resolve_device() turns it into "cpu" / "cuda[:N]"
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 0.001
    optimizer: str = "Adam"
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    train_data_root: str | None = None
    val_data_root: str | None = None
    train_transform: Any = None  # None: the val_transform is used for training too
    val_transform: Any = None
    scheduler: str | None = None
    scheduler_params: dict[str, Any] = field(default_factory=dict)
    early_stopping: dict[str, Any] | None = None
    class_weights: list[float] | str | None = None  # or "balanced": from the class counts
    sampler: str | None = None  # "balanced": every class drawn equally often in training
    val_split: float | None = None  # 0..1: validation images taken from train_data_root
    work_dir: str = "work_dirs"
    num_workers: int = 0
    pretrained: bool = False
    input_size: list[int] | None = None  # [H, W]; None: taken from val_transform
    seed: int | None = 42
    mixed_precision: str = "auto"  # auto | bf16 | fp16 | off; resolved by training.resolve_amp
    channels_last: bool | str = "auto"  # True | False | "auto" (True on CUDA)
    gpu_input: bool | str = "auto"  # decode + transforms on the GPU (training.gpu_loader)
    # "auto": keep decoded images on the GPU from the first epoch, up to a third of its free
    # memory; "ram" | "gpu": decode them all once, up front; None: decode every epoch
    gpu_input_cache: str | None = "auto"
    # Keys of the original pochitrain (config_legacy.py). None: chosen automatically.
    train_pin_memory: bool | None = None  # pinned loader memory (auto: on with CUDA)
    infer_pin_memory: bool | None = None
    gpu_non_blocking: bool | None = None  # async host->GPU copies (auto: on with CUDA)
    cudnn_benchmark: bool | None = None  # cuDNN autotune (auto: on with CUDA)
    mean: list[float] | None = None  # informational (val_transform's Normalize is used)
    std: list[float] | None = None
    enable_metrics_export: bool = True  # training_metrics.csv + plots
    enable_tensorboard: bool = False
    enable_gradient_tracking: bool = False
    gradient_tracking_config: dict[str, Any] = field(default_factory=dict)
    enable_layer_wise_lr: bool = False
    layer_wise_lr_config: dict[str, Any] = field(default_factory=dict)
    confusion_matrix_config: dict[str, Any] | None = None
    optuna: dict[str, Any] | None = None
    benchmark_env_name: str | None = None
    config_path: Path | None = None  # the file these settings came from (not a config key)

    @property
    def missing_paths(self) -> dict[str, ResolvedPath]:
        """Relative paths found in neither candidate folder (see config_paths); not a key."""
        found: dict[str, ResolvedPath] = self.__dict__.setdefault("_missing_paths", {})
        return found

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (transforms as their repr)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("train_transform", "val_transform"):
                value = None if value is None else repr(value)
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out

    def require_paths(self, *keys: str, what: str = "") -> None:
        """MissingPathError (naming both candidates) for the first of ``keys`` found nowhere."""
        for key in keys:
            if key in self.missing_paths:
                raise missing_path_error(key, self.missing_paths[key], self.config_path, what)


KEYS = tuple(f.name for f in fields(Settings) if f.name != "config_path")


def _check_known_keys(raw: dict[str, Any], config_path: Path) -> None:
    for key in raw:
        if key not in KEYS:
            raise ConfigError("不明な config のキーがあります\n"
                              f"Unknown config key {key!r} in {config_path}."
                              f"{did_you_mean(key, KEYS)}",
                              f"Valid keys: {', '.join(KEYS)}. Rename it, or start helper "
                              "names with '_' so they are ignored.")


def _validate(raw: dict[str, Any], config_dir: Path, config_path: Path,
              scheduler_trial: bool = True) -> Settings:
    s = Settings(config_path=config_path)
    _check_known_keys(raw, config_path)
    g = {**s.to_dict(), "train_transform": None, "val_transform": None, **raw}
    if not isinstance(g["model_name"], str):
        raise type_error("model_name", g["model_name"], "a model name string like 'resnet18'")
    from pochitrain.models import SUPPORTED_MODELS

    s.model_name = check_choice("model_name", g["model_name"], SUPPORTED_MODELS)
    s.num_classes = check_int("num_classes", g["num_classes"], 2, allow_none=True)
    s.device = check_device(g["device"])
    s.epochs = int(check_int("epochs", g["epochs"], 1) or 1)
    s.batch_size = int(check_int("batch_size", g["batch_size"], 1) or 1)
    s.learning_rate = check_float("learning_rate", g["learning_rate"], 0.0, strict=True)
    s.optimizer = check_choice("optimizer", g["optimizer"], OPTIMIZERS)
    s.weight_decay = check_float("weight_decay", g["weight_decay"], 0.0, strict=False)
    s.momentum = check_float("momentum", g["momentum"], 0.0, strict=False)
    paths, missing = resolve_config_paths({k: g[k] for k in PATH_KEYS}, config_dir,
                                          config_path)
    for key, value in paths.items():
        setattr(s, key, value)
    s.missing_paths.update(missing)
    s.train_transform = check_transform("train_transform", g["train_transform"])
    s.val_transform = check_transform("val_transform", g["val_transform"])
    s.scheduler, s.scheduler_params = check_scheduler(g["scheduler"], g["scheduler_params"],
                                                       s.epochs, scheduler_trial)
    s.early_stopping = check_early_stopping(g["early_stopping"])
    s.class_weights = check_class_weights(g["class_weights"])
    s.sampler = None if g["sampler"] is None else check_choice("sampler", g["sampler"],
                                                               ("balanced",))
    s.val_split = check_val_split(g["val_split"], g["val_data_root"])
    s.num_workers = int(check_int("num_workers", g["num_workers"], 0) or 0)
    if not isinstance(g["pretrained"], bool):
        raise type_error("pretrained", g["pretrained"], "True or False")
    s.pretrained = g["pretrained"]
    s.input_size = check_input_size(g["input_size"])
    s.seed = check_int("seed", g["seed"], 0, allow_none=True, maximum=2**32 - 1)  # numpy's
    s.mixed_precision = check_choice("mixed_precision", g["mixed_precision"], MIXED_PRECISIONS)
    cl = g["channels_last"]
    if not (isinstance(cl, bool) or (isinstance(cl, str) and cl.lower() == "auto")):
        raise type_error("channels_last", cl, "True, False or 'auto' (True on a CUDA GPU)")
    s.channels_last = cl if isinstance(cl, bool) else "auto"
    gi = g["gpu_input"]
    if not (isinstance(gi, bool) or gi == "auto"):
        raise type_error("gpu_input", gi, "True, False or 'auto' (GPU decode when possible)")
    s.gpu_input = gi
    if g["gpu_input_cache"] not in ("auto", None, "ram", "gpu"):
        raise type_error("gpu_input_cache", g["gpu_input_cache"], "'auto', None, 'ram' or 'gpu'")
    s.gpu_input_cache = g["gpu_input_cache"]
    _validate_original_keys(s, g)
    return s


def _validate_original_keys(s: Settings, g: dict[str, Any]) -> None:
    """The keys of the original pochitrain, with its meaning (see config_legacy)."""
    from pochitrain import config_legacy as L

    for key in ("train_pin_memory", "infer_pin_memory", "gpu_non_blocking", "cudnn_benchmark"):
        setattr(s, key, L.check_optional_bool(key, g[key]))
    s.mean, s.std = L.check_mean_std("mean", g["mean"]), L.check_mean_std("std", g["std"])
    for key in ("enable_metrics_export", "enable_tensorboard", "enable_gradient_tracking",
                "enable_layer_wise_lr"):
        setattr(s, key, L.check_bool(key, g[key]))
    s.gradient_tracking_config = L.check_gradient_tracking(g["gradient_tracking_config"])
    s.layer_wise_lr_config = L.check_layer_wise_lr(s.enable_layer_wise_lr,
                                                   g["layer_wise_lr_config"])
    s.confusion_matrix_config = L.check_confusion_matrix_config(g["confusion_matrix_config"])
    s.optuna = L.check_optuna(g["optuna"])
    env = g["benchmark_env_name"]
    if env is not None and (not isinstance(env, str) or not env.strip()):
        raise type_error("benchmark_env_name", env, "None or a label string, e.g. 'lab-gpu'")
    s.benchmark_env_name = env


def _exec_error(path: Path, exc: BaseException) -> ConfigError:
    """The failing line of the config file (not our traceback)."""
    line_no, text = None, ""
    if isinstance(exc, SyntaxError) and exc.filename and Path(exc.filename) == path:
        line_no, text = exc.lineno, (exc.text or "").strip()
    else:
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if frame.filename and Path(frame.filename) == path:
                line_no, text = frame.lineno, (frame.line or "").strip()
                break
    where = f"{path}, line {line_no}" if line_no else str(path)
    shown = f"\n    {text}" if text else ""
    detail = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    return ConfigError("config ファイルの実行中にエラーが発生しました\n"
                       f"The config file raised an error ({where}):{shown}\n"
                       f"{type(exc).__name__}: {detail}",
                       "Fix that line of the config file (it is run as Python).")


def config_file(path: Path | str) -> Path:
    """The config file's resolved path; ConfigError when it is missing, not a file or not
    readable. Cheap: commands call it before importing torch."""
    path = Path(path_argument("config", path, "'configs/pochi_train_config.py'") or "")
    path = path.expanduser()
    if not path.exists():
        raise ConfigError("config ファイルが見つかりません\n"
                          f"Config file not found: {path}",
                          "Pass -c/--config-path with an existing config .py file (see "
                          "configs/pochi_train_config.py, or run 'pochi sample-data DIR').")
    if not path.is_file():
        raise ConfigError("config のパスがファイルではありません\n"
                          f"Config path is not a file: {path}", "Pass the path of a .py file.")
    path = path.resolve()
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise ConfigError("config ファイルを読み込めません\n"
                          f"Cannot read the config file {path}: {exc.strerror}",
                          "Check the file's permissions.") from exc
    return path


def load_config(path: Path | str, overrides: dict[str, Any] | None = None, *,
                scheduler_trial: bool = True) -> Settings:
    """Run a config file and return its validated ``Settings``; ConfigError on any problem.
    ``overrides`` (``{"epochs": 3}`` from the command line) are validated the same way.
    ``scheduler_trial``: also run the scheduler on a throwaway optimizer, for the commands that
    train; the others check its name and arguments only (torch's optimizer imports
    TorchDynamo, 1-2 s)."""
    path = config_file(path)
    try:
        from pochitrain.fastimport import without_dynamo

        try:
            with without_dynamo():  # configs import torchvision.transforms: skip dynamo's cost
                namespace = runpy.run_path(str(path), run_name="__pochitrain_config__")
        except ImportError:  # a config that needs TorchDynamo itself: run it the plain way
            namespace = runpy.run_path(str(path), run_name="__pochitrain_config__")
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code can raise anything
        raise _exec_error(path, exc) from None
    raw = {k: v for k, v in namespace.items()  # a function is a valid train_transform
           if not k.startswith("_")
           and (k in TRANSFORM_KEYS or not isinstance(v, (types.ModuleType, types.FunctionType,
                                                           types.BuiltinFunctionType, type)))}
    raw.update(overrides or {})
    return _validate(raw, config_paths_base(path), path, scheduler_trial)


def resolve_device(device: str, flag: str | None = None) -> str:
    """'auto' -> 'cuda' when available else 'cpu'; 'cuda[:N]' without that GPU is an error
    naming ``flag`` (the command-line option, e.g. "--device") or else the config key."""
    import torch

    prepare_cuda_env()  # a device is chosen before CUDA starts: the Python API's training too
    where = f"{flag} {device}" if flag else f"device = {device!r}"
    if device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", device):
        raise (UsageError if flag else ConfigError)(
            "不明なデバイスが指定されています\n"
            f"Unknown device in {where}.", "Use auto, cpu, cuda or cuda:N.")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        error = BackendMissingError if flag else ConfigError
        if not torch.cuda.is_available():
            use = (f"{flag} auto (uses the GPU when there is one) or {flag} cpu" if flag else
                   "device = 'auto' (uses the GPU when there is one) or 'cpu'")
            raise error("CUDA GPU が見つかりません\n"
                        f"{where} but no CUDA GPU is available here.",
                        f"Use {use}, or run on a machine with an NVIDIA GPU and a CUDA build of "
                        "PyTorch.")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise error("指定した番号の GPU がありません\n"
                        f"{where} but only {torch.cuda.device_count()} GPU(s) are visible.",
                        "Use a smaller index or 'auto'.")
    return device


def preprocess_from_settings(settings: Settings) -> Preprocess:
    """The inference ``Preprocess`` described by the config's val_transform."""
    from pochitrain.preprocess import from_transform

    if settings.val_transform is None:
        where = settings.config_path or "the config"
        raise ConfigError(
            f"{NO_VAL_TRANSFORM_JA}\n"
            f"val_transform is not set in {where}: the inference preprocessing is unknown.",
            "--config-path で val_transform を含む config を指定してください / Pass "
            "--config-path with a config that defines val_transform (e.g. "
            "transforms.Compose([transforms.Resize((H, W)), transforms.ToTensor(), "
            "transforms.Normalize(mean, std)])).",
        )
    try:
        return from_transform(settings.val_transform, settings.input_size)
    except ConfigError:
        size = _first_image_size(settings)  # the original's configs often have no Resize
        if size is None:  # an unresolved data folder is the real cause, not the transform
            settings.require_paths("train_data_root", "val_data_root")
            raise
    from dataclasses import replace

    from pochitrain.console import info

    info(f"val_transform does not fix the image size: using {size[0]}x{size[1]}, the size of "
         "the training images (set input_size = [H, W] to choose).")
    pre = from_transform(settings.val_transform, size)
    return pre if pre.resize is not None else replace(pre, resize=list(size))


def class_names_from_config(settings: Settings, config_path: Path) -> list[str]:
    """The run's run.json class names, else the class folders of train_data_root."""
    names = (read_run_json(config_path.parent) or {}).get("class_names")
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    if settings.train_data_root:
        from pochitrain.data import scan_image_folder

        settings.require_paths("train_data_root")
        return scan_image_folder(settings.train_data_root, "training data folder").classes
    raise ConfigError(
        "このモデルのクラス名が見つかりません\n"
        f"Cannot find the class names for this model: no metadata in the model file, no "
        f"run.json beside {config_path} and no train_data_root in it.",
        "Use a model exported by pochitrain, or set train_data_root in the config.",
    )


def _first_image_size(settings: Settings) -> list[int] | None:
    """[H, W] of the first image of train_data_root (else val_data_root), or None."""
    from pochitrain.data import open_rgb, scan_image_folder

    for root in (settings.train_data_root, settings.val_data_root):
        if not root or not Path(root).is_dir():
            continue
        try:
            folder = scan_image_folder(root, "data folder")
        except DataError:
            continue
        for path, _ in folder.samples[:20]:
            image = open_rgb(path)
            if image is not None:
                return [image.height, image.width]
    return None

"""pochitrain.config: real config files, validation messages, device, config discovery."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from background import Job, Script

from pochitrain.cli.main import run
from pochitrain.config import (
    NO_VAL_TRANSFORM_JA,
    Settings,
    load_config,
    preprocess_from_settings,
    resolve_device,
)
from pochitrain.errors import ConfigError
from pochitrain.workspace import find_config_near

REPO = Path(__file__).resolve().parents[1]

VAL_TF = """
from torchvision import transforms
val_transform = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(),
                                    transforms.Normalize([0.5] * 3, [0.5] * 3)])
"""


def _config(tmp_path: Path, body: str, name: str = "config.py") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def _error(tmp_path: Path, body: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, body))
    return err.value


def test_example_config_loads_with_every_key() -> None:
    s = load_config(REPO / "configs" / "pochi_train_config.py")
    assert s.model_name == "resnet18" and s.optimizer == "Adam" and s.epochs == 20
    assert s.train_data_root == str(REPO / "data" / "train")  # relative to the config's folder
    assert s.work_dir == str(REPO / "work_dirs")
    assert s.scheduler == "StepLR" and s.scheduler_params == {"step_size": 10, "gamma": 0.1}
    assert s.early_stopping == {"patience": 5, "min_delta": 0.0, "monitor": "val_accuracy"}
    assert preprocess_from_settings(s).input_size == [224, 224]
    text = (REPO / "configs" / "pochi_train_config.py").read_text(encoding="utf-8")
    for key in Settings.__dataclass_fields__:
        if key != "config_path":
            assert f"\n{key} = " in text, f"example config does not show {key}"


def test_defaults_helpers_and_imports_are_ignored(tmp_path: Path) -> None:
    body = VAL_TF + (
        "import math\nfrom os.path import join\n_helper = 3\n"
        "def _f():\n    return 1\nclass _Thing:\n    pass\n"
        "epochs = int(math.sqrt(16))\ntrain_data_root = 'data/train'\n"
        "optimizer = 'adamw'\nscheduler = 'CosineAnnealingLR'\ninput_size = 32\n"
    )
    s = load_config(_config(tmp_path, body))
    assert s.epochs == 4 and s.optimizer == "AdamW" and s.device == "auto"
    assert s.pretrained is False  # no download unless the config asks (the original: True)
    assert s.scheduler_params == {"T_max": 4}  # defaults to epochs
    assert s.train_data_root == str(tmp_path / "data" / "train")
    assert s.val_data_root is None and s.num_classes is None and s.input_size == [32, 32]
    assert s.work_dir == str(tmp_path / "work_dirs") and s.config_path == tmp_path / "config.py"
    pre = preprocess_from_settings(s)
    assert pre.input_size == [32, 32] and pre.mean == [0.5] * 3
    assert s.to_dict()["val_transform"].startswith("Compose(")


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Config file not found"):
        load_config(tmp_path / "nope.py")
    with pytest.raises(ConfigError, match="not a file"):
        load_config(tmp_path)
    binary = tmp_path / "picture.py"  # e.g. an image saved under the config's name
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(ConfigError) as err:
        load_config(binary)
    assert "picture.py" in err.value.message and "raised an error" in err.value.message
    if os.geteuid() != 0:  # root can read anything
        locked = _config(tmp_path, "epochs = 3\n", "locked.py")
        locked.chmod(0)
        with pytest.raises(ConfigError, match="Cannot read"):
            load_config(locked)


def test_file_that_raises_names_the_line(tmp_path: Path) -> None:
    err = _error(tmp_path, "epochs = 3\n\nbatch_size = 1 / 0\n")
    assert "line 3" in err.message and "batch_size = 1 / 0" in err.message
    assert "ZeroDivisionError" in err.message and "Traceback" not in str(err)
    err = _error(tmp_path, "epochs = (\n")
    assert "SyntaxError" in err.message and "config.py" in err.message
    err = _error(tmp_path, "import no_such_module_pochi\n")
    assert "line 1" in err.message and "ModuleNotFoundError" in err.message


def test_typo_key_suggests_the_nearest(tmp_path: Path) -> None:
    err = _error(tmp_path, "epoch = 5\n")
    assert "'epoch'" in err.message and "Did you mean 'epochs'?" in err.message
    err = _error(tmp_path, "learnig_rate = 0.1\n")
    assert "Did you mean 'learning_rate'?" in err.message
    assert "Valid keys:" in (err.remedy or "")


@pytest.mark.parametrize(("body", "words"), [
    ("epochs = '10'\n", ["'epochs'", "whole number"]),
    ("epochs = 0\n", ["'epochs'", ">= 1"]),
    ("batch_size = True\n", ["'batch_size'"]),
    ("learning_rate = -1\n", ["'learning_rate'", "> 0"]),
    ("optimizer = 'Adamm'\n", ["'optimizer'", "SGD, Adam, AdamW", "Did you mean 'Adam'"]),
    ("model_name = 'resnet19'\n", ["'model_name'", "resnet18"]),
    ("device = 'gpu'\n", ["'device'", "'auto'"]),
    ("scheduler = 'Step'\n", ["'scheduler'", "StepLR"]),
    ("scheduler = 'StepLR'\n", ["step_size"]),
    ("scheduler = 'StepLR'\nscheduler_params = {'step_sise': 3}\n", ["Did you mean 'step_size'"]),
    ("early_stopping = {'patience': 0}\n", ["patience", ">= 1"]),
    ("early_stopping = {'monitor': 'accuracy'}\n", ["val_accuracy, val_loss"]),
    ("early_stopping = {'patients': 3}\n", ["Did you mean 'patience'"]),
    ("early_stopping = 5\n", ["'early_stopping'"]),
    ("class_weights = [1, 'a']\n", ["'class_weights'"]),
    ("input_size = [32]\n", ["'input_size'", "[HEIGHT, WIDTH]"]),
    ("pretrained = 'yes'\n", ["'pretrained'", "True or False"]),
    ("num_workers = -1\n", ["'num_workers'"]),
    ("train_data_root = 5\n", ["'train_data_root'", "folder path"]),
    ("val_transform = 'Resize(32)'\n", ["'val_transform'", "torchvision transform"]),
    ("mixed_precision = 'bf61'\n", ["'mixed_precision'", "auto, bf16, fp16, off",
                                    "Did you mean 'bf16'"]),
    ("mixed_precision = True\n", ["'mixed_precision'", "auto, bf16, fp16, off"]),
    ("channels_last = 'yes'\n", ["'channels_last'", "True, False or 'auto'"]),
    ("channels_last = 1\n", ["'channels_last'", "True, False or 'auto'"]),
    ("gpu_input_cache = 'disk'\n", ["'gpu_input_cache'", "'auto', None, 'ram' or 'gpu'"]),
])
def test_wrong_type_or_value_names_key_and_allowed(tmp_path: Path, body: str,
                                                   words: list[str]) -> None:
    err = _error(tmp_path, body)
    text = str(err)
    for word in words:
        assert word in text


def test_precision_keys(tmp_path: Path) -> None:
    s = load_config(_config(tmp_path, "epochs = 1\n"))
    assert s.mixed_precision == "auto" and s.channels_last == "auto"
    s = load_config(_config(tmp_path, "mixed_precision = 'BF16'\nchannels_last = False\n"))
    assert s.mixed_precision == "bf16" and s.channels_last is False
    assert s.to_dict()["mixed_precision"] == "bf16"
    err = _error(tmp_path, "mixed_precison = 'bf16'\n")
    assert "Did you mean 'mixed_precision'?" in err.message
    err = _error(tmp_path, "channel_last = True\n")
    assert "Did you mean 'channels_last'?" in err.message


def test_overrides_are_validated(tmp_path: Path) -> None:
    path = _config(tmp_path, "epochs = 10\n")
    assert load_config(path, {"epochs": 2}).epochs == 2
    with pytest.raises(ConfigError, match="'epochs'"):
        load_config(path, {"epochs": 0})


def test_device_resolution() -> None:
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError) as err:
        resolve_device("cuda")
    assert "no CUDA GPU" in err.value.message and "'auto'" in (err.value.remedy or "")


def test_preprocess_without_val_transform_is_the_spec_error(tmp_path: Path) -> None:
    s = load_config(_config(tmp_path, "model_name = 'resnet18'\n"))
    with pytest.raises(ConfigError) as err:
        preprocess_from_settings(s)
    lines = err.value.message.splitlines()
    assert lines[0] == NO_VAL_TRANSFORM_JA == "configにval_transformが設定されていません"
    assert lines[1].startswith("val_transform is not set in")
    assert "--config-path" in (err.value.remedy or "")


def test_find_config_near(tmp_path: Path) -> None:
    run_dir = tmp_path / "work_dirs" / "20260101_001"
    (run_dir / "models").mkdir(parents=True)
    (tmp_path / "config.py").write_text("epochs = 1\n")  # above the run folder: never used
    model = run_dir / "models" / "best_epoch3.pth"
    assert find_config_near(model) is None
    (run_dir / "config.py").write_text("epochs = 1\n")
    assert find_config_near(model) == run_dir / "config.py"
    assert find_config_near(run_dir / "best.onnx") == run_dir / "config.py"
    (run_dir / "models" / "config.py").write_text("epochs = 2\n")
    assert find_config_near(model) == run_dir / "models" / "config.py"
    loose = tmp_path / "a" / "b" / "c" / "model.onnx"  # no run folder: folder and parent only
    loose.parent.mkdir(parents=True)
    assert find_config_near(loose) is None
    (tmp_path / "a" / "b" / "config.py").write_text("epochs = 1\n")
    assert find_config_near(loose) == tmp_path / "a" / "b" / "config.py"


def test_cli_config_errors_exit_2_without_traceback(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["train", "-c", str(tmp_path / "missing.py")]) == 2
    err = capsys.readouterr().err
    assert "Config file not found" in err and "Traceback" not in err
    typo = _config(tmp_path, "epohcs = 3\n")
    assert run(["train", "-c", str(typo)]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'epochs'?" in err and "Traceback" not in err


def test_run_folder_copy_keeps_the_original_relative_paths(tmp_path: Path) -> None:
    """pochi train copies config.py into the run folder; its relative paths still mean the
    folders next to the original config (run.json says where that was)."""
    import json

    from pochitrain.resolve import find_val_data

    src = tmp_path / "project"
    (src / "val").mkdir(parents=True)
    original = src / "config.py"
    original.write_text('val_data_root = "val"\ntrain_data_root = "train"\n', encoding="utf-8")
    run_dir = tmp_path / "work_dirs" / "20261128_001"
    (run_dir / "models").mkdir(parents=True)
    (run_dir / "config.py").write_bytes(original.read_bytes())
    (run_dir / "run.json").write_text(json.dumps({"config_path": str(original)}))
    settings = load_config(run_dir / "config.py")
    assert Path(settings.val_data_root or "") == (src / "val").resolve()
    assert find_val_data(run_dir / "models" / "best_epoch3.pth") == (src / "val").resolve()
    # without run.json the copy is a config like any other
    (run_dir / "run.json").unlink()
    assert Path(load_config(run_dir / "config.py").val_data_root or "") == (run_dir / "val").resolve()


# A run's config read for its preprocessing alone, in a fresh interpreter (started as the
# session begins): its scheduler's step_size would fail only on an optimizer.
UNTRAINED_READ = Script(
    "import sys\nfrom pathlib import Path\nfrom pochitrain.resolve import RunConfig\n"
    "settings = RunConfig(Path('config.py'), True).settings\n"
    "print(settings.scheduler, 'torch._dynamo' in sys.modules)\n",
    files={"config.py": VAL_TF + "scheduler = 'StepLR'\nscheduler_params = {'step_size': 0}\n"})
SCRIPTS = {"config_read_without_training": UNTRAINED_READ}


def test_a_command_that_does_not_train_reads_a_config_without_torchdynamo(
        scripts: dict[str, Job]) -> None:
    """Inference, export and conversion read a run's config for its preprocessing: the
    scheduler is checked by name and arguments, not run on an optimizer (which imports
    TorchDynamo). Training runs it: a value that fails only then is refused there."""
    job = scripts["config_read_without_training"]
    out = job.result()
    assert out.stdout.split() == ["StepLR", "False"], out.stderr[-2000:]
    with pytest.raises(ConfigError, match="step_size"):
        load_config(job.cwd / "config.py")

"""The original pochitrain's config keys: accepted with the original's meaning."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import original_config

from pochitrain.config import load_config
from pochitrain.errors import ConfigError


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.py"
    path.write_text("from torchvision import transforms\n"
                    "val_transform = transforms.Compose([transforms.Resize((32, 32)), "
                    "transforms.ToTensor()])\n" + body, encoding="utf-8")
    return path


def test_original_sample_config_is_accepted_with_its_meaning(compat_data: Path,
                                                             tmp_path: Path) -> None:
    s = load_config(original_config(tmp_path, compat_data))
    assert s.train_pin_memory is True and s.gpu_non_blocking is True
    assert s.cudnn_benchmark is False and s.infer_pin_memory is True
    assert s.mean == [0.485, 0.456, 0.406] and s.std == [0.229, 0.224, 0.225]
    assert s.enable_gradient_tracking and s.gradient_tracking_config["aggregation_method"] == \
        "median"
    assert s.gradient_tracking_config["exclude_patterns"] == ["fc\\.", "\\.bias"]
    assert s.enable_layer_wise_lr and s.layer_wise_lr_config["layer_rates"]["fc"] == 0.01
    assert s.early_stopping is None  # the original's "enabled": False
    assert s.confusion_matrix_config["title"] == "混同行列"
    assert s.confusion_matrix_config["figsize"] == (8.0, 6.0)
    assert s.optuna["n_trials"] == 20 and "learning_rate" in s.optuna["search_space"]


def test_original_early_stopping_min_delta_is_percentage_points(tmp_path: Path) -> None:
    s = load_config(_write(tmp_path, "early_stopping = {'enabled': True, 'patience': 30, "
                                     "'min_delta': 3.0, 'monitor': 'val_accuracy'}\n"))
    assert s.early_stopping == {"patience": 30, "min_delta": 0.03, "monitor": "val_accuracy"}
    s = load_config(_write(tmp_path, "early_stopping = {'enabled': True}\n"))
    assert s.early_stopping == {"patience": 10, "min_delta": 0.0, "monitor": "val_accuracy"}
    s = load_config(_write(tmp_path, "early_stopping = {'enabled': True, 'min_delta': 0.5, "
                                     "'monitor': 'val_loss'}\n"))
    assert s.early_stopping["min_delta"] == 0.5  # loss keeps its unit
    # pochitrain's own form keeps working (fraction of 1)
    s = load_config(_write(tmp_path, "early_stopping = {'patience': 3, 'min_delta': 0.01}\n"))
    assert s.early_stopping == {"patience": 3, "min_delta": 0.01, "monitor": "val_accuracy"}


def test_early_stopping_forms_mixed_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, "early_stopping = {'patience': 30, 'min_delta': 3.0, "
                                     "'monitor': 'val_accuracy'}\n"))
    text = str(err.value)
    assert "mixes two forms" in text and "'enabled'" in text and "percentage points" in text
    assert "0.03" in err.value.remedy
    with pytest.raises(ConfigError, match="early_stopping\\['enabled'\\]"):
        load_config(_write(tmp_path, "early_stopping = {'enabled': 'yes'}\n"))


@pytest.mark.parametrize("body, words", [
    ("train_pin_memory = 'yes'\n", ["train_pin_memory", "True, False or None"]),
    ("layer_wise_lr_config = {'layer_rates': {'layer5': 0.1}}\n", ["layer5", "layer1"]),
    ("enable_layer_wise_lr = True\n", ["layer_rates"]),
    ("gradient_tracking_config = {'aggregation_method': 'avg'}\n", ["aggregation_method"]),
    ("gradient_tracking_config = {'exclude_patterns': ['(']}\n", ["regular expression"]),
    ("confusion_matrix_config = {'cmap': 'Blue'}\n", ["colormap", "Blues"]),
    ("confusion_matrix_config = {'titel': 'x'}\n", ["Did you mean 'title'"]),
    ("optuna = {'n_trial': 3}\n", ["Did you mean 'n_trials'"]),
    ("std = [0.2, 0.0, 0.2]\n", ["std"]),
    ("enable_tensorbord = True\n", ["Did you mean 'enable_tensorboard'"]),
])
def test_bad_original_keys_name_the_problem(tmp_path: Path, body: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, body))
    for word in words:
        assert word in str(err.value)


def test_layer_rates_group_matching_no_parameter(tmp_path: Path) -> None:
    from pochitrain.models import build_model
    from pochitrain.training.optim import layer_param_groups

    model = build_model("mobilenet_v3_small", 3)
    with pytest.raises(ConfigError) as err:
        layer_param_groups(model, "mobilenet_v3_small", {"layer4": 0.01}, 0.001)
    assert "'layer4'" in err.value.message and "mobilenet_v3_small" in err.value.message
    groups = layer_param_groups(build_model("resnet18", 3), "resnet18",
                                {"fc": 0.01, "layer1": 0.0002}, 0.001)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["fc"] == 0.01 and lrs["layer1"] == 0.0002 and lrs["conv1"] == 0.001
    assert set(lrs) == {"layer1", "layer2", "layer3", "layer4", "conv1", "bn1", "fc"}

"""Bad or unusual inputs (issue 11): each case gets a clear message or a correct result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pochitrain.data import (
    PIXEL_LIMIT_ENV,
    ImageFolder,
    _pixel_limit_from_env,
    check_classes,
    open_rgb,
    remap_labels,
)
from pochitrain.errors import ConfigError, DataError, UsageError

REPO = Path(__file__).resolve().parents[1]
EXIF_ORIENTATION = 0x0112


# ---- images -------------------------------------------------------------------------------

def test_image_over_the_pixel_limit_is_unreadable_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big, warned = tmp_path / "big.png", tmp_path / "warned.png"
    Image.new("1", (100, 100)).save(big)  # 10,000 pixels: > 2x the limit, PIL raises
    Image.new("1", (40, 40)).save(warned)  # 1,600 pixels: between 1x and 2x, PIL only warns
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert open_rgb(big) is None
    assert open_rgb(warned) is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the user's own limit is respected
    image = open_rgb(big)
    assert image is not None and image.size == (100, 100) and image.mode == "RGB"


def test_pixel_limit_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89478485)
    _pixel_limit_from_env({})
    assert Image.MAX_IMAGE_PIXELS == 89478485  # unset: left alone
    _pixel_limit_from_env({PIXEL_LIMIT_ENV: "300_000_000"})
    assert Image.MAX_IMAGE_PIXELS == 300_000_000
    _pixel_limit_from_env({PIXEL_LIMIT_ENV: "none"})
    assert Image.MAX_IMAGE_PIXELS is None
    with pytest.raises(UsageError, match=PIXEL_LIMIT_ENV):
        _pixel_limit_from_env({PIXEL_LIMIT_ENV: "lots"})


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "gray16.png"
    Image.fromarray(np.full((6, 8), 25700, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = np.asarray(open_rgb(path))
    assert pixels.shape == (6, 8, 3)
    assert np.all(pixels == 100)  # 25700 / 257; convert("RGB") alone gives 255


def _rotated_jpeg(path: Path) -> Path:
    """A 40x20 (w x h) JPEG, left half red, with EXIF orientation 6 (rotate 90 clockwise)."""
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    img.save(path, quality=95, exif=exif.tobytes())
    return path


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = open_rgb(_rotated_jpeg(tmp_path / "phone.jpg"))
    assert image is not None and image.size == (20, 40)  # upright: portrait
    top, bottom = np.asarray(image)[5, 10], np.asarray(image)[35, 10]
    assert top[0] > 200 and bottom[2] > 200  # the red half went to the top


def test_gpu_pipeline_reads_exif_rotated_and_16_bit_files_like_pil(tmp_path: Path) -> None:
    from pochitrain.inference.gpu_preprocess import _read

    kind, pixels = _read(_rotated_jpeg(tmp_path / "phone.jpg"))
    assert kind == "rgb" and pixels.shape == (40, 20, 3)  # PIL path: nvJPEG ignores EXIF
    plain = tmp_path / "plain.jpg"
    Image.new("RGB", (8, 8)).save(plain)
    assert _read(plain)[0] == "jpeg"
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(np.full((4, 4), 25700, dtype=np.uint16)).save(gray16)
    kind, pixels = _read(gray16)
    assert kind == "rgb" and np.all(pixels == 100)


# ---- class folders ------------------------------------------------------------------------

def _folder(root: Path, classes: list[str]) -> ImageFolder:
    return ImageFolder(root, classes, [(root / c / "a.png", i) for i, c in enumerate(classes)])


def test_a_subset_of_the_model_classes_is_accepted_and_labelled_by_name(tmp_path: Path) -> None:
    model_classes = [str(d) for d in range(10)]
    folder = _folder(tmp_path, ["3", "7"])
    check_classes(folder, model_classes)
    assert [label for _, label in remap_labels(folder, model_classes).samples] == [3, 7]


def test_unknown_class_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        check_classes(_folder(tmp_path, ["3", "cat"]), [str(d) for d in range(10)])
    assert "cat" in err.value.message and "'3'" not in err.value.message
    assert "--data" not in str(err.value) and "0, 1, 2" in (err.value.remedy or "")
    with pytest.raises(DataError) as err:
        check_classes(_folder(tmp_path, ["a", "dog"]), ["a", "b"], for_training=True)
    text = str(err.value)
    assert "dog" in text and "val_data_root" in text and "train_data_root" in text
    assert "--data" not in text and "model" not in text


# ---- config -------------------------------------------------------------------------------

_TF = """
from torchvision import transforms
_norm = transforms.Normalize([0.5] * 3, [0.5] * 3)
val_transform = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(), _norm])
"""


def _load(tmp_path: Path, body: str):
    from pochitrain.config import load_config

    path = tmp_path / "config.py"
    path.write_text(_TF + body, encoding="utf-8")
    return load_config(path)


def _config_error(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, body)
    return str(err.value)


@pytest.mark.parametrize("key", ["val_transform", "train_transform"])
def test_transform_without_to_tensor_is_refused_at_load(tmp_path: Path, key: str) -> None:
    text = _config_error(tmp_path, f"{key} = transforms.Compose([transforms.Resize((32, 32))])\n")
    assert key in text and "ToTensor" in text and "PIL" in text
    text = _config_error(tmp_path, f"{key} = transforms.Compose([transforms.Resize((32, 32)), "
                         "transforms.PILToTensor()])\n")
    assert "uint8" in text and "ToTensor" in text
    text = _config_error(tmp_path, f"{key} = transforms.Compose([transforms.RandomCrop(999), "
                         "transforms.Resize(32)])\n")  # fails on the test image: steps checked
    assert "no ToTensor step" in text


def test_a_function_is_a_valid_train_transform(tmp_path: Path) -> None:
    s = _load(tmp_path, "def train_transform(image):\n"
              "    return val_transform(image.rotate(5))\n")
    assert callable(s.train_transform) and s.train_transform.__name__ == "train_transform"
    s = _load(tmp_path, "train_transform = lambda image: val_transform(image)\n")
    assert s.train_transform is not None


def test_a_function_as_val_transform_says_what_is_accepted(tmp_path: Path) -> None:
    text = _config_error(tmp_path, "val_transform = lambda image: image\n")
    assert "val_transform is a function" in text and "not set" not in text
    assert "Resize, CenterCrop, ToTensor, Normalize" in text
    text = _config_error(tmp_path, "val_transform = transforms.ToTensor\n")  # no ()
    assert "class ToTensor" in text and "parentheses" in text


@pytest.mark.parametrize(("params", "words"), [
    ("{'T_max': '6'}", ["scheduler_params['T_max']", "'6' (str)", "'T_max': 6"]),
    ("{'T_max': 0}", ["CosineAnnealingLR", "ZeroDivisionError"]),
    ("{'T_max': None}", ["scheduler_params['T_max']", "a number"]),
])
def test_badly_typed_scheduler_params_are_refused_at_load(tmp_path: Path, params: str,
                                                          words: list[str]) -> None:
    text = _config_error(tmp_path, f"scheduler = 'CosineAnnealingLR'\nscheduler_params = {params}\n")
    for word in words:
        assert word in text, text


def test_multistep_milestones_must_be_numbers(tmp_path: Path) -> None:
    text = _config_error(tmp_path, "scheduler = 'MultiStepLR'\n"
                         "scheduler_params = {'milestones': '3,5'}\n")
    assert "scheduler_params['milestones']" in text and "[10, 20]" in text
    s = _load(tmp_path, "scheduler = 'MultiStepLR'\nscheduler_params = {'milestones': [3, 5]}\n")
    assert s.scheduler_params == {"milestones": [3, 5]}

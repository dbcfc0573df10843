"""Bad or unusual inputs: each case gets a clear message or a correct result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pochitrain.data import (
    PIXEL_LIMIT_ENV,
    ImageFolder,
    check_classes,
    open_rgb,
    pixel_limit_from_env,
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
    pixel_limit_from_env({})
    assert Image.MAX_IMAGE_PIXELS == 89478485  # unset: left alone
    pixel_limit_from_env({PIXEL_LIMIT_ENV: "300_000_000"})
    assert Image.MAX_IMAGE_PIXELS == 300_000_000
    pixel_limit_from_env({PIXEL_LIMIT_ENV: "none"})
    assert Image.MAX_IMAGE_PIXELS is None
    with pytest.raises(UsageError, match=PIXEL_LIMIT_ENV):
        pixel_limit_from_env({PIXEL_LIMIT_ENV: "lots"})


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
    from pochitrain.gpu_input import read_item

    kind, pixels = read_item(_rotated_jpeg(tmp_path / "phone.jpg"))
    assert kind == "rgb" and pixels.shape == (40, 20, 3)  # PIL path: nvJPEG ignores EXIF
    plain = tmp_path / "plain.jpg"
    Image.new("RGB", (8, 8)).save(plain)
    assert read_item(plain)[0] == "jpeg"
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(np.full((4, 4), 25700, dtype=np.uint16)).save(gray16)
    kind, pixels = read_item(gray16)
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


# ---- training data and checkpoints --------------------------------------------------------

def test_sample_config_trains_on_images_of_any_size(tmp_path: Path) -> None:
    from pochitrain.config import load_config
    from pochitrain.sample_data import write_digits_config

    settings = load_config(write_digits_config(tmp_path / "config.py"))
    for size in ((50, 40), (32, 32), (8, 8)):
        assert tuple(settings.train_transform(Image.new("RGB", size)).shape) == (3, 32, 32)


def test_a_batch_of_mixed_sizes_names_a_file_and_the_fix(tmp_path: Path) -> None:
    import torch

    from pochitrain.training import collate_skipping

    a, b, c = (tmp_path / n for n in ("a.png", "b.png", "c.png"))
    items = [(torch.zeros(3, 32, 32), 0, 0, a), (torch.zeros(3, 40, 32), 1, 1, b),
             (torch.zeros(3, 32, 32), 0, 2, c), (None, 1, 3, tmp_path / "bad.png")]
    with pytest.raises(DataError) as err:
        collate_skipping(items)
    assert str(b) in err.value.message and "(3, 40, 32)" in err.value.message
    assert "transforms.Resize((H, W))" in (err.value.remedy or "")
    batch = collate_skipping([items[0], items[2], items[3]])
    assert batch.images is not None and tuple(batch.images.shape) == (2, 3, 32, 32)
    assert batch.skipped == [3]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pochitrain.checkpoint import save_checkpoint
    from pochitrain.meta import ModelMeta
    from pochitrain.models import build_model
    from pochitrain.preprocess import Preprocess

    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    meta = ModelMeta(["a", "b", "c"], Preprocess.simple(32, 32), model_name="resnet18")
    save_checkpoint(path, build_model("resnet18", 3), meta)
    return path


@pytest.mark.parametrize(("edit", "words"), [
    ({"model_name": "resnet34"}, ["resnet34", "missing from the file", "layer1.2."]),
    ({"class_names": [str(i) for i in range(10)]},
     ["10 classes", "fc.weight has shape (3, 512) in the file but (10, 512)"]),
    ({"model_name": "mobilenet_v3_small"}, ["mobilenet_v3_small", "not in the model"]),
    ({"model_name": "resnet19"}, ["resnet19"]),
])
def test_checkpoint_metadata_that_does_not_fit_the_weights(
        tiny_checkpoint: Path, tmp_path: Path, edit: dict, words: list[str]) -> None:
    import torch

    from pochitrain.checkpoint import load_model
    from pochitrain.errors import ModelFileError

    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["meta"].update(edit)
    edited = tmp_path / "edited.pth"
    torch.save(payload, edited)
    with pytest.raises(ModelFileError) as err:
        load_model(edited)
    text = str(err.value)
    assert "edited" in (err.value.remedy or "") and len(text) < 700, text
    for word in words:
        assert word in text, text
    _, meta = load_model(tiny_checkpoint)  # the untouched file still loads
    assert meta.class_names == ["a", "b", "c"]


def test_worker_errors_lose_the_worker_traceback() -> None:
    from pochitrain.cli.main import unwrapped_error

    wrapped = DataError("Caught DataError in DataLoader worker process 0.\n"
                        "Original Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                        "pochitrain.errors.DataError: Images of one batch differ\nAdd Resize\n")
    error = unwrapped_error(wrapped)
    assert isinstance(error, DataError) and "Traceback" not in str(error)
    assert error.message == "Images of one batch differ\nAdd Resize"
    plain = DataError("plain", "fix")
    assert unwrapped_error(plain) is plain


# ---- command line -------------------------------------------------------------------------

def _ascii_run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    return subprocess.run([sys.executable, *args], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=300)  # hang guard only


def test_ascii_console_gets_escapes_never_a_unicode_error(tmp_path: Path) -> None:
    done = _ascii_run(["-m", "pochitrain.cli.main", "infer", "missing.pth"], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "\\u30a8\\u30e9\\u30fc / Error:" in done.stderr and "missing.pth" in done.stderr
    code = ("from pochitrain.console import info, warn\n"
            "info('結果 / Results: ok')\nwarn('中断しました / Interrupted')")
    done = _ascii_run(["-c", code], tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "/ Results: ok" in done.stdout and "/ Interrupted" in done.stdout


def test_piped_output_never_cuts_a_path(tmp_path: Path) -> None:
    code = ("from rich.table import Table\nfrom pochitrain.console import console, info\n"
            "p = '/data/' + 'long_folder_name/' * 12 + 'best_epoch3.pth'\n"
            "t = Table()\nt.add_column('what')\nt.add_column('path')\nt.add_row('model', p)\n"
            "console().print(t)\ninfo('model: ' + p)\nprint(p)\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "80"}, timeout=300)
    path = done.stdout.strip().splitlines()[-1]
    assert len(path) > 200
    assert done.stdout.count(path) == 3 and "…" not in done.stdout, done.stdout


def test_no_verb_lists_the_verbs_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from pochitrain.cli.main import VERBS, run

    assert run([]) == 2
    err = capsys.readouterr().err
    assert all(verb in err for verb in VERBS) and "no VERB given" in err


@pytest.mark.parametrize("entry", ["export_onnx_main", "infer_onnx_main", "infer_trt_main",
                                   *(f"pochi {verb}" for verb in ("train", "infer", "convert",
                                                                  "sample-data", "quickstart"))])
def test_version_on_every_entry_point(entry: str, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from pochitrain import __version__
    from pochitrain.cli import main

    with pytest.raises(SystemExit) as exc:
        if entry.startswith("pochi "):
            main.run([entry.split()[1], "--version"])
        else:
            monkeypatch.setattr(sys, "argv", ["x", "--version"])
            getattr(main, entry)()
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out


def test_train_flags_are_blamed_by_name(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from pochitrain.cli.main import run

    config = tmp_path / "config.py"
    config.write_text("epochs = 1\n", encoding="utf-8")
    assert run(["train", "-c", str(config), "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "--device gpu" in err and "config key" not in err
    afile = tmp_path / "afile"
    afile.write_text("x")
    for work_dir in (afile, afile / "sub"):
        assert run(["train", "-c", str(config), "--work-dir", str(work_dir)]) == 2
        err = capsys.readouterr().err
        assert "--work-dir" in err and "--output" not in err and "not a folder" in err
    assert not list(tmp_path.glob("**/models"))

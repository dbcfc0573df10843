"""pochi sample-data: real PNG folders plus a config that loads and points at them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pochitrain.cli.main import run
from pochitrain.config import load_config, preprocess_from_settings
from pochitrain.data import open_rgb, scan_image_folder
from pochitrain.sample_data import CLASS_NAMES, DIGITS_TRAINING


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.png")):
        h.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return h.hexdigest()


def test_cli_writes_folders_and_config(tmp_path: Path, digits_dir: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "digits"
    assert run(["sample-data", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1438 training images" in printed and "359 validation images" in printed
    assert str(out / "config.py") in printed and "pochi train -c" in printed

    train = scan_image_folder(out / "train")
    val = scan_image_folder(out / "val")
    assert train.classes == val.classes == CLASS_NAMES
    assert (len(train.samples), len(val.samples)) == (1438, 359)
    image = open_rgb(train.samples[0][0])
    assert image is not None and image.size == (32, 32) and image.mode == "RGB"
    # deterministic: identical to the session's digits written by write_digits
    assert _digest(out / "val") == _digest(digits_dir / "val")

    settings = load_config(out / "config.py")
    assert settings.train_data_root == str((out / "train").resolve())
    assert settings.val_data_root == str((out / "val").resolve())
    assert settings.work_dir == str((out / "work_dirs").resolve())
    assert settings.model_name == "resnet18" and settings.num_classes == 10
    assert settings.epochs == DIGITS_TRAINING["epochs"]
    assert settings.scheduler_params == {"T_max": settings.epochs}
    assert load_config(out / "config.py", {"epochs": 2}).scheduler_params == {"T_max": 2}
    assert preprocess_from_settings(settings).input_size == [32, 32]


def test_refuses_a_non_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert run(["sample-data", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert run(["sample-data", str(a_file)]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_empty_existing_folder_is_fine(tmp_path: Path) -> None:
    from pochitrain.pipeline.quickstart import write_sample_data

    out = tmp_path / "empty"
    out.mkdir()
    config = write_sample_data(out)
    assert config == out / "config.py" and (out / "train" / "9").is_dir()


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    for verb in ("sample-data", "train"):
        with pytest.raises(SystemExit):
            run([verb, "--help"])
        text = capsys.readouterr().out
        assert "usage:" in text
    with pytest.raises(SystemExit):
        run(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--config-path", "--work-dir", "--epochs", "--device", "--quiet"):
        assert option in text

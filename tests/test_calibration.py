"""INT8 calibration data: sources, spec errors, seeded stratified selection, corrupt images,
cache keys and the convert options. Fast: no quantization runs here (see test_int8.py)."""

from __future__ import annotations

import argparse
import shutil
from collections import Counter
from pathlib import Path

import pytest

from pochitrain.data import scan_image_folder
from pochitrain.errors import CalibrationError, UsageError
from pochitrain.meta import ModelMeta
from pochitrain.onnx import calibration as cal
from pochitrain.preprocess import Preprocess

META = ModelMeta([str(i) for i in range(10)], Preprocess.simple(32, 32), model_name="resnet18")


def _english_line(exc: CalibrationError) -> str:
    lines = exc.message.splitlines()
    assert len(lines) >= 2, "spec message first, then an English line"
    return lines[1]


# ---- where the data and the preprocessing come from -------------------------------------

def test_no_calibration_data_is_the_spec_error(tmp_path: Path) -> None:
    onnx_path = tmp_path / "model.onnx"  # no config beside it, no --calib-data
    with pytest.raises(CalibrationError) as err:
        cal.resolve_source(onnx_path, META, None, None, (32, 32))
    first = err.value.message.splitlines()[0]
    assert "calibratorが必須です" in first
    assert "--calib-data を指定するか, configに val_data_rootを設定してください" in first
    assert "no --calib-data was given" in _english_line(err.value)
    assert "--calib-data DIR" in err.value.remedy


def test_no_preprocessing_is_the_spec_error(tmp_path: Path, digits_dir: Path) -> None:
    # an ONNX without pochitrain metadata and no config: val_transform cannot be found
    with pytest.raises(CalibrationError) as err:
        cal.resolve_source(tmp_path / "model.onnx", None, digits_dir / "val", None, (32, 32))
    assert err.value.message.splitlines()[0] == "configにval_transformが設定されていません"
    assert "no pochitrain metadata" in _english_line(err.value)
    assert "--config-path" in err.value.remedy


def test_preprocessing_follows_the_engine_size(digits_dir: Path, tmp_path: Path) -> None:
    src = cal.resolve_source(tmp_path / "m.onnx", META, digits_dir / "val", None, (48, 40))
    assert src.preprocess.input_size == [48, 40] and src.preprocess_from == "model metadata"
    assert src.data_root == digits_dir / "val" and src.data_from == "--calib-data"


def _write_config(folder: Path, body: str) -> Path:
    path = folder / "config.py"
    path.write_text(body, encoding="utf-8")
    return path


def test_config_without_val_transform_or_data(tmp_path: Path, digits_dir: Path) -> None:
    config = _write_config(tmp_path, "model_name = 'resnet18'\nnum_classes = 10\n"
                           "train_data_root = 'data/train'\n")
    with pytest.raises(CalibrationError) as err:  # no --calib-data, config has no val_data_root
        cal.resolve_source(tmp_path / "m.onnx", META, None, config, (32, 32))
    assert "--calib-data を指定するか, configに val_data_rootを設定してください" in err.value.message
    assert "has no val_data_root" in _english_line(err.value)
    with pytest.raises(CalibrationError) as err:  # no metadata, config has no val_transform
        cal.resolve_source(tmp_path / "m.onnx", None, digits_dir / "val", config, (32, 32))
    assert err.value.message.splitlines()[0] == "configにval_transformが設定されていません"
    assert "has no val_transform" in _english_line(err.value)


def test_config_auto_detected_gives_data_and_preprocessing(tmp_path: Path,
                                                           digits_dir: Path) -> None:
    run_dir = tmp_path / "20260101_001"
    (run_dir / "models").mkdir(parents=True)
    _write_config(run_dir, (
        "from torchvision import transforms\n"
        f"val_data_root = {str(digits_dir / 'val')!r}\n"
        "val_transform = transforms.Compose([transforms.Resize((40, 40)), transforms.ToTensor(),"
        " transforms.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))])\n"))
    onnx_path = run_dir / "models" / "best.onnx"  # no metadata, no -c, no --calib-data
    src = cal.resolve_source(onnx_path, None, None, None, (40, 40))
    assert src.config_path == run_dir / "config.py"
    assert src.data_root == digits_dir / "val" and src.data_from.startswith("val_data_root of")
    assert src.preprocess.resize == [40, 40] and src.preprocess.mean == [0.5, 0.5, 0.5]
    assert src.preprocess_from.startswith("val_transform of")


# ---- folders ------------------------------------------------------------------------------

def test_missing_or_empty_folder_is_not_found(tmp_path: Path) -> None:
    for folder in (tmp_path / "nope", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
            (folder / "notes.txt").write_text("not an image")
        with pytest.raises(CalibrationError) as err:
            cal.scan_calibration_folder(folder)
        assert err.value.message.startswith("キャリブレーションデータが見つかりません")
        assert "No usable calibration images" in _english_line(err.value)


def test_selection_is_seeded_stratified_and_disjoint(digits_dir: Path) -> None:
    folder = scan_image_folder(digits_dir / "train")
    pool, held = cal.split_samples(folder)
    again = cal.split_samples(scan_image_folder(digits_dir / "train"))
    assert (pool, held) == again  # deterministic
    assert not {p for p, _ in pool} & {p for p, _ in held}
    assert len(pool) + len(held) == len(folder.samples)
    per_class = Counter(lab for _, lab in folder.samples)
    held_per_class = Counter(lab for _, lab in held)
    for label, n in per_class.items():  # ~20% of every class is held out
        assert abs(held_per_class[label] - round(n * cal.HOLDOUT_FRACTION)) <= 1
    first = Counter(lab for _, lab in pool[:100])  # any prefix is stratified: ~10 per class
    assert set(first) == set(range(10)) and max(first.values()) - min(first.values()) <= 2
    other_seed, _ = cal.split_samples(folder, seed=1)
    assert other_seed[:100] != pool[:100]


def test_flat_folder_selection(tmp_path: Path, digits_dir: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted((digits_dir / "val" / "3").glob("*.png"))[:10]:
        shutil.copy(path, flat / path.name)
    folder = cal.scan_calibration_folder(flat)
    pool, held = cal.split_samples(folder)
    assert len(held) == 2 and len(pool) == 8 and all(lab == -1 for _, lab in pool)


def test_corrupt_images_are_skipped_counted_and_replaced(tmp_path: Path,
                                                         digits_dir: Path) -> None:
    good = sorted((digits_dir / "val" / "1").glob("*.png"))[:4]
    bad = [tmp_path / "bad1.png", tmp_path / "bad2.png"]
    bad[0].write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    bad[1].write_bytes(good[0].read_bytes()[:60])
    candidates = [(good[0], 1), (bad[0], 1), (good[1], 1), (bad[1], 1), (good[2], 1),
                  (good[3], 1)]
    data, used, corrupt = cal.load_images(candidates, 3, Preprocess.simple(32, 32), "test")
    assert data.shape == (3, 3, 32, 32) and str(data.dtype) == "float32"
    assert [p for p, _ in used] == good[:3]
    assert corrupt == bad


# ---- cache key -----------------------------------------------------------------------------

def test_cache_key_names_what_changed() -> None:
    key = {"onnx_sha256": "a" * 64, "calib_samples": 500, "calib_method": "percentile",
           "images_fingerprint": "f" * 64, "preprocess": {"input_size": [32, 32]}}
    assert cal.describe_change(None, key) == "no calibration cache yet"
    assert cal.describe_change(dict(key), key) is None
    reason = cal.describe_change({**key, "calib_samples": 200, "images_fingerprint": "0"}, key)
    assert reason == "images_fingerprint changed, calib_samples 200 -> 500"
    assert cal.describe_change({**key, "onnx_sha256": "b" * 64}, key) == "onnx_sha256 changed"


# ---- convert options -----------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    from pochitrain.cli.common import add_config
    from pochitrain.cli.int8_args import add_int8_arguments

    parser = argparse.ArgumentParser()
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--fp16", action="store_true")
    add_int8_arguments(parser, precision_group=group)
    add_config(parser)
    return parser


def test_options_defaults_match_the_int8_module() -> None:
    from pochitrain.cli import int8_args
    from pochitrain.cli.int8_args import int8_options_from_args
    from pochitrain.onnx import int8

    assert int8_args.METHODS == tuple(int8.METHODS)
    opts = int8_options_from_args(_parser().parse_args(["--int8", "-c", "run/config.py"]))
    assert opts == int8.Int8Options(calib_data=None, config_path=Path("run/config.py"))
    assert (opts.calib_samples, opts.calib_batch_size, opts.calib_method,
            opts.max_accuracy_drop, opts.use_cache) == (500, 1, "percentile", 1.0, True)


def test_int8_excludes_fp16(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["--int8", "--fp16"])
    assert exit_.value.code == 2 and "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--calib-samples", "--calib-batch-size", "--verify-samples"])
def test_zero_counts_are_usage_errors(option: str) -> None:
    from pochitrain.cli.int8_args import int8_options_from_args

    args = _parser().parse_args(["--int8", "--calib-data", "d", option, "0"])
    with pytest.raises(UsageError) as err:
        int8_options_from_args(args)
    assert err.value.exit_code == 2 and f"{option} must be 1 or more, got 0" in err.value.message


def test_calib_samples_zero_through_pochi(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    from pochitrain.cli.main import run

    code = run(["convert", str(tmp_path / "m.onnx"), "--int8", "--calib-data", str(tmp_path),
                "--calib-samples", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--calib-samples must be 1 or more" in err and "Traceback" not in err

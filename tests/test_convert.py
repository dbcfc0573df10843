"""`pochi convert` end to end: real TensorRT-RTX builds of pochitrain exports, bad input."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import tensorrt_rtx_bindings  # noqa: F401 - CI must fail, not skip, without TensorRT-RTX

from pochitrain.cli.main import run


@pytest.fixture(scope="module")
def exports(trained_checkpoint: Path, onnx_export: Callable[..., Path]) -> dict[int, Path]:
    """pattern -> ONNX written by pochitrain's export-onnx (the trained 32x32 digits model)."""
    return {pattern: onnx_export(trained_checkpoint, pattern) for pattern in (1, 2, 3)}


def _copy(src: Path, folder: Path) -> Path:
    dst = folder / src.name
    shutil.copy(src, dst)
    return dst


def _convert(*argv: str) -> int:
    return run(["convert", "--no-progress", *argv])


def _meta(engine: Path) -> dict:
    return json.loads(Path(str(engine) + ".json").read_text(encoding="utf-8"))


def test_pattern1_fp32_and_fp16(exports: dict[int, Path], digits_dir: Path,
                                tmp_path: Path) -> None:
    onnx_path = _copy(exports[1], tmp_path)
    assert _convert(str(onnx_path)) == 0
    assert _convert(str(onnx_path), "--fp16", "--verify-data", str(digits_dir / "val")) == 0
    fp32, fp16 = tmp_path / "p1.engine", tmp_path / "p1_fp16.engine"
    assert fp32.is_file() and fp16.is_file()
    m32, m16 = _meta(fp32), _meta(fp16)
    for meta, precision in ((m32, "fp32"), (m16, "fp16")):
        assert meta["format"] == "pochitrain-engine-v1"
        assert meta["backend"] == "tensorrt_rtx" and meta["backend_version"].startswith("1.")
        assert meta["precision"] == precision and meta["pattern"] == 1
        assert meta["input"]["name"] == "input" and meta["input"]["dtype"] == "float32"
        assert meta["input"]["onnx_shape"] == ["batch_size", 3, 32, 32]
        assert meta["input"]["profile"] == {"min": [1, 3, 32, 32], "opt": [1, 3, 32, 32],
                                            "max": [1, 3, 32, 32]}
        assert meta["output"]["onnx_shape"] == ["batch_size", 10]
        assert meta["model"]["class_names"] == [str(i) for i in range(10)]
        assert meta["model"]["preprocess"]["input_size"] == [32, 32]
        assert meta["calibration"] is None and meta["gpu"] is None
        assert len(meta["engine_sha256"]) == 64 and len(meta["source_onnx"]["sha256"]) == 64
    assert m32["build"]["precision_graph"] == str(onnx_path.resolve())
    assert m16["build"]["precision_graph"] == str((tmp_path / "p1_fp16.onnx").resolve())
    # the network really computes in the asked precision
    assert set(m32["build"]["options"]["network_compute_types"]) == {"FLOAT"}
    assert set(m16["build"]["options"]["network_compute_types"]) == {"HALF"}
    check = m16["build"]["options"]["fp16"]["check"]
    assert check["images"] == 64 and check["top1_agreement"] >= 0.97
    assert str(digits_dir / "val") in check["source"]
    # DESIGN.md: resnet18 45.0 MB (FP32) vs 22.7 MB (FP16)
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size
    from pochitrain.tensorrt.engine_file import engine_matches, read_engine_metadata

    assert engine_matches(fp16, read_engine_metadata(fp16))


def test_pattern2_needs_input_size(exports: dict[int, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path = _copy(exports[2], tmp_path)
    assert _convert(str(onnx_path)) == 2
    err = capsys.readouterr().err
    assert "ONNXモデルに動的シェイプが含まれています" in err
    assert "--input-size 224 224" in err and "height" in err and "Traceback" not in err
    assert list(tmp_path.glob("*.engine*")) == []
    assert _convert(str(onnx_path), "--input-size", "40", "48") == 0
    assert _convert(str(onnx_path), "--fp16", "--input-size", "40", "48") == 0
    for name, precision in (("p2.engine", "fp32"), ("p2_fp16.engine", "fp16")):
        meta = _meta(tmp_path / name)
        assert meta["pattern"] == 2 and meta["precision"] == precision
        assert meta["input"]["onnx_shape"] == ["batch_size", 3, "height", "width"]
        assert meta["input"]["profile"]["opt"] == [1, 3, 40, 48]
        assert meta["build"]["options"]["input_size"] == [40, 48]


def test_pattern3_static(exports: dict[int, Path], tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path = _copy(exports[3], tmp_path)
    assert _convert(str(onnx_path), "--batch-size", "4") == 2
    assert "バッチサイズ変更不可" in capsys.readouterr().err
    assert _convert(str(onnx_path)) == 0
    assert _convert(str(onnx_path), "--fp16") == 0
    m32, m16 = _meta(tmp_path / "p3.engine"), _meta(tmp_path / "p3_fp16.engine")
    for meta in (m32, m16):
        assert meta["pattern"] == 3 and meta["input"]["profile"] is None
        assert meta["input"]["static_shape"] == [2, 3, 32, 32]
    assert (tmp_path / "p3_fp16.engine").stat().st_size < 0.6 * (
        tmp_path / "p3.engine").stat().st_size


def test_batch_options_and_output(exports: dict[int, Path], tmp_path: Path) -> None:
    onnx_path = _copy(exports[1], tmp_path)
    out = tmp_path / "sub" / "b4.engine"
    out.parent.mkdir()
    assert _convert(str(onnx_path), "--batch-size", "4", "--output", str(out),
                    "--workspace-size", "256M") == 0
    meta = _meta(out)
    assert meta["input"]["profile"]["min"] == meta["input"]["profile"]["max"] == [4, 3, 32, 32]
    assert meta["build"]["workspace_size"] == 256 << 20
    out2 = tmp_path / "range.engine"
    assert _convert(str(onnx_path), "--batch", "1", "2", "8", "-o", str(out2)) == 0
    prof = _meta(out2)["input"]["profile"]
    assert (prof["min"][0], prof["opt"][0], prof["max"][0]) == (1, 2, 8)


def test_existing_output_needs_overwrite(exports: dict[int, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path = _copy(exports[1], tmp_path)
    engine = tmp_path / "p1.engine"
    engine.write_bytes(b"precious")
    assert _convert(str(onnx_path)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert engine.read_bytes() == b"precious"
    assert not Path(str(engine) + ".json").exists()
    assert _convert(str(onnx_path), "--overwrite") == 0
    assert engine.stat().st_size > 1_000_000 and _meta(engine)["precision"] == "fp32"


@pytest.mark.parametrize("argv", [["--input-size", "32"], ["--input-size", "32", "32", "3"]])
def test_input_size_needs_two_values(exports: dict[int, Path], argv: list[str],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert _convert(str(exports[2]), *argv) == 2
    assert "--input-size takes two values" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--input-size", "0", "32"], ["--fp16", "--int8"],
                                  ["--batch-size", "2", "--batch", "1", "2", "4"]])
def test_argparse_refusals(exports: dict[int, Path], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _convert(str(exports[1]), *argv)
    assert exc.value.code == 2


def test_missing_and_corrupt_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _convert(str(tmp_path / "nope.onnx")) == 1
    assert "ONNX file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    assert _convert(str(bad)) == 1
    assert "not a readable ONNX model" in capsys.readouterr().err
    assert list(tmp_path.glob("*.engine*")) == []


def _tiny_onnx(path: Path, two_inputs: bool = False, op: str = "Relu") -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch_size", 3, 8, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch_size", 4])
    w = numpy_helper.from_array(np.ones((4, 3, 8, 8), np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"]),
             helper.make_node(op, ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["output"])]
    inputs = [x]
    if two_inputs:
        inputs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    graph = helper.make_graph(nodes, "g", inputs, [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_several_inputs_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _tiny_onnx(tmp_path / "two.onnx", two_inputs=True)
    assert _convert(str(path)) == 1
    assert "2 input(s)" in capsys.readouterr().err


def test_parser_failure_shows_errors_and_leaves_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok = _tiny_onnx(tmp_path / "ok.onnx")
    assert _convert(str(ok)) == 0  # the same graph with a real op builds
    bad = _tiny_onnx(tmp_path / "bogus.onnx", op="PochiBogusOp")
    for extra, expected in (([], "ONNX parser rejected bogus.onnx"),
                            (["--fp16"], "FP16 pass cannot validate")):
        before = sorted(p.name for p in tmp_path.iterdir())
        assert _convert(str(bad), *extra) == 1
        err = capsys.readouterr().err
        assert expected in err and "PochiBogusOp" in err
        assert "Traceback" not in err
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no engine, no temp file


def test_int8_is_wired_to_the_qdq_pass(exports: dict[int, Path], tmp_path: Path,
                                        digits_dir: Path) -> None:
    onnx_path = _copy(exports[1], tmp_path)
    assert _convert(str(onnx_path), "--int8", "--calib-data", str(digits_dir / "val"),
                    "--calib-samples", "16", "--verify-samples", "20",
                    "--max-accuracy-drop", "100") == 0
    meta = _meta(tmp_path / "p1_int8.engine")
    assert meta["precision"] == "int8" and isinstance(meta["calibration"], dict)
    assert meta["build"]["precision_graph"] == str((tmp_path / "p1_int8_qdq.onnx").resolve())
    assert meta["build"]["options"]["quantize_layers"] > 0
    assert (tmp_path / "p1_int8.engine").stat().st_size < (
        0.5 * 45e6 if meta["model"]["model_name"] == "resnet18" else 1e12)


def test_help_explains_patterns_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run(["convert", "--help"])
    out = capsys.readouterr().out
    for text in ("pattern", "ONNXモデルに動的シェイプが含まれています", "--input-size 224 224",
                 "--fp16", "--int8", "--batch-size", "--timing-cache", "--workspace-size",
                 "--backend", "--overwrite", "--verify-data", "min = opt = max"):
        assert text in out, text


def test_orphaned_sidecar_is_replaced_but_a_live_one_is_protected(
        exports: dict[int, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path = _copy(exports[1], tmp_path)
    assert _convert(str(onnx_path)) == 0
    engine = tmp_path / "p1.engine"
    engine.unlink()  # the user removed the engine; its sidecar stays behind
    capsys.readouterr()
    assert _convert(str(onnx_path)) == 0
    assert "replacing p1.engine.json: its engine p1.engine no longer exists" in \
        capsys.readouterr().out
    assert _meta(engine)["engine_sha256"] and engine.is_file()
    engine.with_name("other.engine.json").write_text("{}")  # a sidecar whose engine exists:
    (tmp_path / "other.engine").write_bytes(b"x")  # still protected
    assert _convert(str(onnx_path), "-o", str(tmp_path / "other.engine")) == 2
    assert (tmp_path / "other.engine").read_bytes() == b"x"


def test_output_that_is_a_folder_is_a_usage_error(exports: dict[int, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path = _copy(exports[1], tmp_path)
    (tmp_path / "out").mkdir()
    for extra in ([], ["--overwrite"]):
        assert _convert(str(onnx_path), "-o", str(tmp_path / "out"), *extra) == 2
        err = capsys.readouterr().err
        assert "is a folder" in err and "Traceback" not in err
    assert list((tmp_path / "out").iterdir()) == []


def test_pattern2_sidecar_preprocessing_follows_input_size(
        exports: dict[int, Path], tmp_path: Path, digits_dir: Path) -> None:
    """A 32x32-trained model built at --input-size 64 64: the sidecar's preprocessing is 64x64,
    so infer-trt's size check accepts the engine it just built."""
    from pochitrain.meta import ModelMeta
    from pochitrain.model import check_input_size

    onnx_path = _copy(exports[2], tmp_path)
    assert _convert(str(onnx_path), "--input-size", "64", "64") == 0
    meta = _meta(tmp_path / "p2.engine")
    assert meta["model"]["preprocess"]["input_size"] == [64, 64]
    model = ModelMeta.from_dict(meta["model"])
    opt = meta["input"]["profile"]["opt"]  # the H, W the engine's runner states
    check_input_size((opt[2], opt[3]), model)  # does not raise


@pytest.fixture(scope="module")
def fp32_engine(exports: dict[int, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One pattern-1 FP32 engine (and its sidecar), built once for the tests that edit copies."""
    folder = tmp_path_factory.mktemp("fp32_engine")
    engine = folder / "m.engine"
    assert _convert(str(_copy(exports[1], folder)), "-o", str(engine)) == 0
    return engine


@pytest.mark.parametrize(("key", "value"), [("precision", ["fp32"]), ("pattern", "1"),
                                            ("input", None), ("model", "resnet")])
def test_edited_sidecar_names_the_wrong_key(fp32_engine: Path, tmp_path: Path,
                                            key: str, value: object) -> None:
    from pochitrain.errors import ModelFileError
    from pochitrain.tensorrt.engine_file import read_engine_metadata

    engine = _copy(fp32_engine, tmp_path)
    meta = _meta(fp32_engine)
    meta[key] = value
    Path(f"{engine}.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=f"wrong value for '{key}'"):
        read_engine_metadata(engine)

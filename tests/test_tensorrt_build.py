"""Real TensorRT-RTX builds of plain torchvision exports; precision guard; engine sidecar."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import tensorrt_rtx_bindings  # noqa: F401 - CI must fail, not skip, without TensorRT-RTX

from pochitrain.errors import BuildError, ModelFileError, OutputExistsError
from pochitrain.pipeline.convert import ConvertOptions, convert
from pochitrain.tensorrt.backend import load_backend
from pochitrain.tensorrt.build import build_engine, check_precision
from pochitrain.tensorrt.engine_file import read_engine_metadata, sidecar_path, write_engine
from pochitrain.tensorrt.profile import resolve_profile


def _export_torchvision(name: str, path: Path) -> Path:
    """Plain torch.onnx.export with the spec's dynamic_axes (pattern 1), 64x64 input."""
    import warnings

    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.randn(1, 3, 64, 64), str(path), input_names=["input"],
                          output_names=["output"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "batch_size"},
                                        "output": {0: "batch_size"}})
    return path


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_fp32_and_fp16(name: str, tmp_path: Path, digits_dir: Path) -> None:
    onnx_path = _export_torchvision(name, tmp_path / f"{name}.onnx")
    sizes = {}
    for precision in ("fp32", "fp16"):
        result = convert(ConvertOptions(onnx_path, precision=precision, progress=False,
                                        verify_data=digits_dir / "val"))
        meta = read_engine_metadata(result.engine_path)
        assert result.engine_path.name == (f"{name}.engine" if precision == "fp32"
                                           else f"{name}_fp16.engine")
        assert meta["precision"] == precision and meta["pattern"] == 1
        assert meta["model"] is None  # plain export: no pochitrain metadata to carry
        assert meta["input"]["profile"]["opt"] == [1, 3, 64, 64]
        types = meta["build"]["options"]["network_compute_types"]
        assert set(types) == ({"FLOAT"} if precision == "fp32" else {"HALF"})
        sizes[precision] = result.engine_size
    # FP16 weights take half the bytes; mobilenet's engine has the most non-weight overhead
    assert sizes["fp16"] < 0.75 * sizes["fp32"], sizes


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export_torchvision("mobilenet_v3_small",
                               tmp_path_factory.mktemp("small") / "mnv3.onnx")


def test_fp32_graph_is_never_built_as_fp16(small_onnx: Path) -> None:
    from pochitrain.onnx.inspect import read_onnx

    info, _ = read_onnx(small_onnx)
    with pytest.raises(BuildError, match="does not compute in FP16"):
        build_engine(load_backend("tensorrt-rtx"), small_onnx, resolve_profile(info), "fp16")
    with pytest.raises(BuildError, match="INT8"):
        check_precision("int8", Counter({"FLOAT": 4}), quantize=0)
    with pytest.raises(BuildError, match="FP32"):
        check_precision("fp32", Counter({"FLOAT": 3, "HALF": 1}), quantize=0)


def test_timing_cache_not_used_by_rtx(small_onnx: Path, tmp_path: Path) -> None:
    cache = tmp_path / "t.cache"
    result = convert(ConvertOptions(small_onnx, output=tmp_path / "m.engine", progress=False,
                                    timing_cache=cache, backend="tensorrt-rtx"))
    # TensorRT-RTX's timing-cache calls are no-ops: nothing is claimed, nothing written
    assert result.metadata["build"]["timing_cache"] is None and not cache.exists()
    assert result.metadata["backend"] == "tensorrt_rtx"


def test_sidecar_errors(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    with pytest.raises(ModelFileError, match="metadata file is missing"):
        read_engine_metadata(engine)
    meta = {"format": "pochitrain-engine-v1", "backend": "tensorrt_rtx", "backend_version": "1",
            "precision": "fp16", "pattern": 1, "input": {}, "output": {}, "model": None,
            "source_onnx": {}, "build": {}}
    write_engine(engine, b"plan", meta, overwrite=False)
    assert engine.read_bytes() == b"plan"
    assert read_engine_metadata(engine)["engine_sha256"] == hashlib.sha256(b"plan").hexdigest()
    with pytest.raises(OutputExistsError):
        write_engine(engine, b"other", meta, overwrite=False)
    assert engine.read_bytes() == b"plan"
    write_engine(engine, b"other", meta, overwrite=True)
    assert engine.read_bytes() == b"other"
    sidecar_path(engine).write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        read_engine_metadata(engine)
    sidecar_path(engine).write_text(json.dumps({"format": "something-else"}), encoding="utf-8")
    with pytest.raises(ModelFileError, match="not pochitrain engine metadata"):
        read_engine_metadata(engine)
    sidecar_path(engine).write_text(json.dumps({"format": "pochitrain-engine-v1"}),
                                    encoding="utf-8")
    with pytest.raises(ModelFileError, match="lacks"):
        read_engine_metadata(engine)

"""The FP16 ONNX pass on a pochitrain export, checked with ONNX Runtime on real images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from pochitrain.errors import VerificationError
from pochitrain.onnx.fp16 import compare_with_onnxruntime, convert_to_fp16, count_float_types


@pytest.fixture(scope="module")
def fp32_onnx(untrained_checkpoint: Path, onnx_export: Callable[..., Path]) -> Path:
    return onnx_export(untrained_checkpoint)


def _images(digits_dir: Path, n: int = 32) -> np.ndarray:
    from pochitrain.data import open_rgb, scan_image_folder
    from pochitrain.preprocess import Preprocess

    pre = Preprocess.simple(32, 32)
    samples = scan_image_folder(digits_dir / "val").samples
    return np.stack([pre(open_rgb(p)) for p, _ in samples[:: max(1, len(samples) // n)][:n]])


def test_cast_graph_types_and_io(fp32_onnx: Path, tmp_path: Path, digits_dir: Path) -> None:
    model = onnx.load(str(fp32_onnx))
    fp16, stats = convert_to_fp16(model)
    assert count_float_types(model)["float16"] == 0  # the input model is untouched
    counts = count_float_types(fp16)
    assert counts["float32"] == 0 and counts["float16"] == stats["initializers"] > 0
    f32 = onnx.TensorProto.FLOAT
    assert fp16.graph.input[0].type.tensor_type.elem_type == f32
    assert fp16.graph.output[0].type.tensor_type.elem_type == f32
    assert [n.op_type for n in (fp16.graph.node[0], fp16.graph.node[-1])] == ["Cast", "Cast"]
    # metadata (class names, preprocessing) survives the pass
    assert [p.key for p in fp16.metadata_props] == [p.key for p in model.metadata_props]
    path = tmp_path / "model_fp16.onnx"
    onnx.save(fp16, str(path))
    assert path.stat().st_size < 0.55 * fp32_onnx.stat().st_size
    result = compare_with_onnxruntime(fp32_onnx, path, _images(digits_dir))
    assert result.images == 32 and result.top1_agreement >= 0.97
    assert 0 < result.max_abs_diff < 0.1


def test_disagreeing_graph_fails_verification(fp32_onnx: Path, tmp_path: Path,
                                              digits_dir: Path) -> None:
    from onnx import numpy_helper

    model, _ = convert_to_fp16(onnx.load(str(fp32_onnx)))
    # sabotage: replace the classifier weights so the classes come out differently
    for i, init in enumerate(model.graph.initializer):
        arr = numpy_helper.to_array(init)
        if arr.ndim == 2 and arr.shape[0] == 10:
            rng = np.random.default_rng(1)
            bad = rng.standard_normal(arr.shape).astype(np.float16)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(bad, init.name))
    path = tmp_path / "broken_fp16.onnx"
    onnx.save(model, str(path))
    with pytest.raises(VerificationError, match="agrees with FP32 on only"):
        compare_with_onnxruntime(fp32_onnx, path, _images(digits_dir))


def test_out_of_range_weights_are_clipped_not_inf(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2])
    w = numpy_helper.from_array(np.array([1e6, 0.5], np.float32), "w")
    graph = helper.make_graph([helper.make_node("Mul", ["input", "w"], ["output"])], "g",
                              [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fp16, stats = convert_to_fp16(model)
    assert stats["clipped_values"] == 1
    assert numpy_helper.to_array(fp16.graph.initializer[0]).tolist() == [65504.0, 0.5]

"""ONNX -> ONNX FP16 pass: weights and activations in float16, float32 graph input/output.

The engine's precision then follows from the graph alone (strongly typed build), and the same
file runs in ONNX Runtime, so the cast is checked on real images before any engine is built.
Inputs that ONNX requires to be float32 (Resize scales, ...) are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pochitrain.errors import ModelFileError, VerificationError, first_line

FP16_MAX = 65504.0
# Default gate for --fp16: the cast graph must pick the same class as FP32 on this share of the
# verification images. FP16 keeps ~3 significant digits, so a classifier flips only near-ties;
# 0.97 leaves room for those on small sets while catching a broken cast (which lands near chance).
MIN_TOP1_AGREEMENT = 0.97

# (op_type, input index) that the ONNX spec types as float32 regardless of the data type.
_KEEP_FP32_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}


class Fp16Graph(NamedTuple):
    model: Any  # onnx.ModelProto
    stats: dict[str, int]  # initializers, constants, casts, clipped_values


def _refuse_control_flow(graph: Any) -> None:
    import onnx

    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute):
            raise ModelFileError(
                "FP16 変換は制御フローに対応していません\n"
                f"The FP16 pass does not handle control flow ({node.op_type} node "
                f"{node.name!r}).",
                "Convert this model to FP32, or simplify it (e.g. onnxsim) first.",
            )


def _cast_tensor(tensor: Any) -> int:
    """A float32 TensorProto (initializer, attribute value) becomes float16 in place; returns
    how many finite values were beyond the float16 range (clamped to it)."""
    from onnx import numpy_helper

    arr = numpy_helper.to_array(tensor)
    finite = np.isfinite(arr)
    clipped = int(np.count_nonzero(np.abs(arr[finite]) > FP16_MAX))
    fp16 = np.where(finite, np.clip(arr, -FP16_MAX, FP16_MAX), arr).astype(np.float16)
    tensor.CopyFrom(numpy_helper.from_array(fp16, tensor.name))
    return clipped


def _cast_initializers(graph: Any, keep: set[str], stats: dict[str, int]) -> None:
    from onnx import TensorProto

    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep:
            stats["clipped_values"] += _cast_tensor(init)
            stats["initializers"] += 1


def _cast_nodes(graph: Any, keep: set[str], stats: dict[str, int]) -> None:
    """Constant and ConstantOfShape values to float16, Cast(to=float) to Cast(to=float16)."""
    from onnx import TensorProto

    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] not in keep:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    stats["clipped_values"] += _cast_tensor(attr.t)
                    stats["constants"] += 1
                elif attr.name == "value_float":
                    raise ModelFileError(  # rare; not produced by torch.onnx.export
                        "FP16 変換は Constant(value_float) に対応していません\n"
                        "The FP16 pass does not handle Constant(value_float).",
                        "Convert this model to FP32.")
        elif node.op_type == "ConstantOfShape":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    _cast_tensor(attr.t)
        elif node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
                    stats["casts"] += 1


def _fp32_boundary(graph: Any) -> None:
    """FP32 at the boundary: cast right after the input and right before the output."""
    from onnx import TensorProto, helper

    for vi in list(graph.input) + list(graph.output):
        if vi.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise ModelFileError("グラフの入出力が float32 ではありません\n"
                                 f"Graph input/output {vi.name!r} is not float32.",
                                 "The FP16 pass expects a float32 image classifier.")
    inp, out = graph.input[0].name, graph.output[0].name
    inp16, out16 = f"{inp}__fp16", f"{out}__fp16"
    for node in graph.node:
        node.input[:] = [inp16 if name == inp else name for name in node.input]
        node.output[:] = [out16 if name == out else name for name in node.output]
    graph.node.insert(0, helper.make_node("Cast", [inp], [inp16], to=TensorProto.FLOAT16,
                                          name="pochitrain_input_to_fp16"))
    graph.node.append(helper.make_node("Cast", [out16], [out], to=TensorProto.FLOAT,
                                       name="pochitrain_output_to_fp32"))


def _validated(model: Any) -> Any:
    """Shape inference recomputes the intermediate types, then the ONNX checker runs."""
    import onnx

    del model.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelFileError(
            "FP16 変換後のグラフを検証できません\n"
            f"The FP16 pass cannot validate the cast graph: {first_line(exc)}",
            "The model uses operators or types the ONNX checker does not know; convert it "
            "to FP32, or export it with standard ONNX operators.",
        ) from exc
    return model


def convert_to_fp16(model: Any) -> Fp16Graph:
    """Return (new ModelProto, stats). The input model is not modified."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    _refuse_control_flow(graph)
    keep = {node.input[i] for node in graph.node for (op, i) in _KEEP_FP32_INPUTS
            if node.op_type == op and len(node.input) > i}
    stats = {"initializers": 0, "constants": 0, "casts": 0, "clipped_values": 0}
    _cast_initializers(graph, keep, stats)
    _cast_nodes(graph, keep, stats)
    _fp32_boundary(graph)
    return Fp16Graph(_validated(model), stats)


def count_float_types(model: Any) -> dict[str, int]:
    """Initializer counts by float dtype, e.g. {"float16": 62, "float32": 0}."""
    from onnx import TensorProto

    types = [init.data_type for init in model.graph.initializer]
    return {"float32": types.count(TensorProto.FLOAT), "float16": types.count(TensorProto.FLOAT16)}


@dataclass
class Agreement:
    images: int
    top1_agreement: float
    max_abs_diff: float

    def to_dict(self) -> dict[str, float | int]:
        return {"images": self.images, "top1_agreement": round(self.top1_agreement, 6),
                "max_abs_diff": float(self.max_abs_diff)}


def compare_with_onnxruntime(fp32_path: Path, fp16_path: Path, batch: np.ndarray,
                             threshold: float = MIN_TOP1_AGREEMENT) -> Agreement:
    """Run both graphs with ONNX Runtime (CPU) on ``batch`` (see ``session.run_all``);
    compare top-1."""
    from pochitrain.onnx.session import open_session, run_all, top1_agreement

    ref, got = (run_all(open_session(p), batch) for p in (fp32_path, fp16_path))
    if not np.isfinite(got).all():
        raise VerificationError(
            "FP16 のグラフが inf/NaN を出力しました\n"
            "The FP16 graph produced inf/NaN on the verification images (float16 overflow).",
            "Convert to FP32 instead, or use --int8 with calibration.",
        )
    agree = top1_agreement(ref, got)
    result = Agreement(len(batch), agree, float(np.max(np.abs(ref - got))))
    if agree < threshold:
        raise VerificationError(
            "FP16 のグラフと FP32 の一致率が基準を下回りました\n"
            f"FP16 graph agrees with FP32 on only {agree:.1%} of {len(batch)} images (top-1); "
            f"the minimum is {threshold:.0%} (max |diff| {result.max_abs_diff:.4g}).",
            "The model is not FP16-safe as is: convert to FP32, or try --int8.",
        )
    return result

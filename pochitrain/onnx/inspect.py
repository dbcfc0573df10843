"""Read an ONNX classifier: its single image input/output, shape pattern and metadata.

Shape patterns (spec, "pochi convert の変換パターン"):
  1: batch dynamic, H/W fixed   -> what export-onnx writes
  2: H and/or W dynamic         -> --input-size required
  3: every dim fixed            -> no optimization profile needed
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pochitrain.errors import ModelFileError
from pochitrain.meta import META_KEY, ModelMeta

Dim = int | str  # fixed size, or the symbol name ("?" when unnamed)


@dataclass
class OnnxInfo:
    path: Path
    input_name: str
    input_shape: list[Dim]
    input_dtype: str
    output_name: str
    output_shape: list[Dim]
    meta: ModelMeta | None
    opset: int

    @property
    def dynamic_dims(self) -> list[int]:
        return [i for i, d in enumerate(self.input_shape) if not isinstance(d, int)]

    @property
    def pattern(self) -> int:
        dyn = set(self.dynamic_dims)
        return 3 if not dyn else 2 if dyn & {2, 3} else 1

    @property
    def fixed_hw(self) -> tuple[int, int] | None:
        h, w = self.input_shape[2], self.input_shape[3]
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None

    def shape_text(self) -> str:
        return "(" + ", ".join(str(d) for d in self.input_shape) + ")"


def _dims(value_info) -> list[Dim]:
    return [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else d.dim_param or "?"
            for d in value_info.type.tensor_type.shape.dim]


def unreadable(path: Path, why: str) -> ModelFileError:
    """The error for a file that does not parse as ONNX (truncated, or not ONNX at all)."""
    return ModelFileError("ONNX モデルとして読み込めません\n"
                          f"{path} is not a readable ONNX model ({why}).",
                          "Re-export it with export-onnx; the file may be truncated or not "
                          "ONNX at all.")


def check_file(path: Path | str) -> Path:
    """``path`` as a Path; ModelFileError when there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError("ONNX ファイルが見つかりません\n"
                             f"ONNX file not found: {path}",
                             "Pass the .onnx written by export-onnx (or your own export).")
    return path


def read_onnx(path: Path | str):
    """Return (OnnxInfo, onnx.ModelProto). Raises ModelFileError for anything unusable."""
    path = check_file(path)  # before onnx's import (0.7 s): a mistyped path is told at once
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise unreadable(path, type(exc).__name__) from exc
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if not graph.node:
        inputs = []  # no graph to run, whatever it declares
    props = {prop.key: prop.value for prop in model.metadata_props}
    elem = _np_elem(onnx, inputs[0]) if inputs else ""
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    info = _checked(path, [(i.name, _dims(i)) for i in inputs],
                    [(o.name, _dims(o)) for o in graph.output], elem, props, opset)
    return info, model


def _np_elem(onnx: Any, value_info: Any) -> str:
    """NumPy's name of an input's element type ("" for a type NumPy has not)."""
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name
    except (KeyError, TypeError, ValueError):
        return ""


# ONNX Runtime's names of tensor element types -> NumPy's
_ORT_ELEM = {"float": "float32", "double": "float64"}


def session_info(path: Path, session: Any) -> OnnxInfo:
    """The OnnxInfo of a model that ONNX Runtime has loaded, with the checks of
    :func:`read_onnx`, from the session alone: running a model needs no ``onnx`` import
    (about a second of a command's start on a small machine). The opset is not known (0)."""
    args = session.get_inputs()
    inputs = [(a.name, _ort_dims(a.shape)) for a in args]
    outputs = [(a.name, _ort_dims(a.shape)) for a in session.get_outputs()]
    elem = args[0].type.removeprefix("tensor(").rstrip(")") if args else ""
    props = dict(session.get_modelmeta().custom_metadata_map)
    return _checked(path, inputs, outputs, _ORT_ELEM.get(elem, elem), props, 0)


def _ort_dims(shape: list[Any] | None) -> list[Dim]:
    """ONNX Runtime's shape (ints, symbol names, None) as ``_dims`` gives it from the file."""
    return [d if isinstance(d, int) and d > 0 else d if isinstance(d, str) and d else "?"
            for d in shape or []]


def _checked(path: Path, inputs: list[tuple[str, list[Dim]]],
             outputs: list[tuple[str, list[Dim]]], elem: str, props: dict[str, str],
             opset: int) -> OnnxInfo:
    """OnnxInfo of one NCHW image input and one (batch, classes) output, else the error."""
    if not inputs or not outputs:
        raise ModelFileError("ONNX ファイルにモデルのグラフがありません\n"
                             f"{path} holds no model graph.", "Re-export the model to ONNX.")
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelFileError(
            "ONNX モデルの入出力の数が画像分類モデルと合いません\n"
            f"{path} has {len(inputs)} input(s) and {len(outputs)} output(s); an image "
            "classifier has exactly one image input and one logits output.",
            "Export the classifier alone (one input NCHW image, one output of class scores).",
        )
    (in_name, in_shape), (out_name, out_shape) = inputs[0], outputs[0]
    if len(in_shape) != 4 or (isinstance(in_shape[1], int) and in_shape[1] != 3):
        raise ModelFileError(
            "ONNX モデルの入力の形状が (batch, 3, H, W) ではありません\n"
            f"{path}: input {in_name!r} has shape {in_shape}; expected (batch, 3, H, W).",
            "pochitrain handles RGB image classifiers with NCHW input.",
        )
    if len(out_shape) != 2:
        raise ModelFileError(
            "ONNX モデルの出力の形状が (batch, num_classes) ではありません\n"
            f"{path}: output {out_name!r} has shape {out_shape}; expected (batch, num_classes).",
            "Export the model up to its logits (no post-processing in the graph).",
        )
    meta = None
    if META_KEY in props:
        try:
            meta = ModelMeta.from_dict(json.loads(props[META_KEY]), where=str(path))
        except json.JSONDecodeError as exc:
            raise ModelFileError("pochitrain のメタデータが正しい JSON ではありません\n"
                                 f"{path}: pochitrain metadata is not valid JSON.",
                                 "Re-export the model with export-onnx.") from exc
    return OnnxInfo(path, in_name, in_shape, elem, out_name, out_shape, meta, opset)


def graph_precision(path: Path) -> str:
    """int8 when the graph quantizes (Q/DQ), fp16 when its weights are float16, else fp32:
    precision read from the graph itself, never from the file name."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node):
        return "int8"
    f16 = onnx.TensorProto.FLOAT16
    if any(t.data_type == f16 for t in graph.initializer):
        return "fp16"
    return "fp32"

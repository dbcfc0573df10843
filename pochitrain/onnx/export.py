"""PyTorch classifier -> ONNX file carrying pochitrain metadata.

Input shapes (spec "ONNX エクスポート時のシェイプ" and the three convert patterns):
  default             (batch_size, 3, H, W)        pattern 1, what the spec's export-onnx writes
  dynamic_spatial     (batch_size, 3, height, width)  pattern 2
  static_batch=N      (N, 3, H, W)                 pattern 3
The output is (batch_size, num_classes) with the same batch symbol (or N).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pochitrain.errors import ExportError, UsageError, first_line
from pochitrain.meta import META_KEY, ModelMeta
from pochitrain.workspace import is_disk_full

if TYPE_CHECKING:
    from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "output"
DEFAULT_OPSET = 17
MIN_OPSET = 9  # adaptive pooling and friends need 9+; TensorRT parses 9+
# The TorchScript exporter's newest opset (torch keeps the number in a private module).
MAX_OPSET = 20


@dataclass(frozen=True)
class ExportShape:
    dynamic_spatial: bool = False
    static_batch: int | None = None

    def __post_init__(self) -> None:
        if self.dynamic_spatial and self.static_batch is not None:
            raise UsageError("--dynamic-spatial と --static-batch は同時に指定できません\n"
                             "--dynamic-spatial and --static-batch cannot be combined.",
                             "Choose one shape: dynamic H/W, or every dimension fixed.")
        if self.static_batch is not None and self.static_batch < 1:
            raise UsageError("--static-batch は 1 以上にしてください\n"
                             f"--static-batch must be 1 or more, got {self.static_batch}.")

    @property
    def pattern(self) -> int:
        return 3 if self.static_batch is not None else 2 if self.dynamic_spatial else 1

    def dynamic_axes(self) -> dict[str, dict[int, str]] | None:
        if self.static_batch is not None:
            return None
        inp = {0: "batch_size"}
        if self.dynamic_spatial:
            inp.update({2: "height", 3: "width"})
        return {INPUT_NAME: inp, OUTPUT_NAME: {0: "batch_size"}}

    def input_shape(self, height: int, width: int) -> list[int | str]:
        if self.static_batch is not None:
            return [self.static_batch, 3, height, width]
        if self.dynamic_spatial:
            return ["batch_size", 3, "height", "width"]
        return ["batch_size", 3, height, width]


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(
            "この --opset には対応していません\n"
            f"--opset {opset} is not supported (this exporter writes opsets "
            f"{MIN_OPSET}..{MAX_OPSET}).",
            f"Use the default ({DEFAULT_OPSET}) unless your runtime needs another.",
        )


def export_model(model: nn.Module, path: Path, meta: ModelMeta, input_size: tuple[int, int],
                 shape: ExportShape = ExportShape(), opset: int = DEFAULT_OPSET,
                 producer_version: str = "") -> None:
    """Export ``model`` (eval mode, CPU) to ``path`` with ``meta`` in metadata_props, by the
    TorchScript exporter: it writes the spec's named dynamic axes and needs no extra package."""
    import onnx
    import torch

    check_opset(opset)
    height, width = input_size
    dummy = torch.zeros(shape.static_batch or 1, 3, height, width)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (dummy,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes=shape.dynamic_axes(), opset_version=opset,
                do_constant_folding=True, dynamo=False,
            )
    except Exception as exc:  # the exporter raises many types (SymbolicValueError, ...)
        if is_disk_full(exc):
            raise  # not the model's fault: the caller names the file being written
        raise ExportError(
            "ONNX へのエクスポートに失敗しました\n"
            f"torch.onnx.export failed for {meta.model_name} at opset {opset}: "
            f"{first_line(exc)}",
            "Try another --opset (e.g. 17 or 18), or check that the model runs on an input "
            f"of shape (1, 3, {height}, {width}).",
        ) from exc
    proto = onnx.load(str(path))
    exporter = f"torch {torch.__version__}"
    proto.producer_name = "pochitrain"
    proto.producer_version = producer_version
    proto.doc_string = f"{meta.model_name}, {meta.num_classes} classes; exported with {exporter}"
    props = {p.key: p.value for p in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**props, META_KEY: meta.to_json(),
                                        "pochitrain.exporter": exporter})
    onnx.save(proto, str(path))

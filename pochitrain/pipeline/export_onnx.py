"""`export-onnx`: checkpoint -> verified ONNX file beside it (or at --output).

The file is written under a temporary name, checked (onnx.checker, ONNX Runtime vs PyTorch),
and only then renamed to its final name: a failed export or verification leaves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pochitrain.console import console, info, warn
from pochitrain.errors import UsageError
from pochitrain.meta import ModelMeta, file_sha256
from pochitrain.onnx.export import DEFAULT_OPSET, ExportShape, export_model
from pochitrain.onnx.verify import verification_batches
from pochitrain.resolve import find_val_data
from pochitrain.workspace import atomic_path, check_writable, probe_writable

if TYPE_CHECKING:
    import numpy as np

VERIFY_BATCH = 16  # the batch > 1 that proves the dynamic axis really works


@dataclass
class ExportOutcome:
    path: Path
    meta: ModelMeta
    input_shape: list[int | str]
    report: Any | None  # onnx.verify.VerifyReport, None with --skip-verify


def _output_path(checkpoint: Path, output: Path | str | None,
                 input_size: tuple[int, int] | None, overwrite: bool) -> Path:
    """The ONNX file to write, checked before anything slow runs."""
    if input_size is not None and min(input_size) < 1:
        raise UsageError("--input-size には正の値を指定してください\n"
                         f"--input-size must be positive, got {list(input_size)}.",
                         "Example: --input-size 224 224")
    out = Path(output) if output is not None else checkpoint.with_suffix(".onnx")
    if out.suffix.lower() != ".onnx":
        raise UsageError("--output の拡張子は .onnx にしてください\n"
                         f"--output must end in .onnx, got {out}.", "Example: --output best.onnx")
    if out.is_dir():
        raise UsageError("--output がフォルダです\n"
                         f"--output {out} is a folder.", "Give a file name ending in .onnx.")
    check_writable(out, overwrite)
    probe_writable(out.parent)
    return out


def _export_meta(meta: ModelMeta, checkpoint: Path,
                 input_size: tuple[int, int] | None) -> ModelMeta:
    """The metadata the ONNX file carries: its preprocessing produces the export size (the
    training size unless given)."""
    height, width = input_size if input_size is not None else meta.input_size
    pre = meta.preprocess.resized_to((int(height), int(width)))
    if pre is not meta.preprocess:
        info(f"Export size {height}x{width} differs from the training size "
             f"{meta.input_size[0]}x{meta.input_size[1]}; the metadata's preprocessing is "
             "rescaled to match.")
    source = {**meta.source, "checkpoint": checkpoint.name,
              "checkpoint_sha256": file_sha256(checkpoint)}
    return ModelMeta(meta.class_names, pre, meta.model_name, source)


def _verification_inputs(checkpoint: Path, data: Path | str | None, target: ModelMeta,
                         shape: ExportShape) -> tuple[list[np.ndarray], str]:
    """(batches, where they came from): the run's validation images, else random inputs."""
    verify_data = Path(data) if data is not None else find_val_data(checkpoint)
    if data is None and verify_data is not None and not verify_data.is_dir():
        warn(f"The run's val_data_root {verify_data} is missing; verifying on random "
             "inputs instead.")
        verify_data = None
    elif verify_data is None:
        warn("No --data given and no val_data_root found for this run: verifying on "
             "random inputs (pass --data DIR to check on real images).")
    sizes = [shape.static_batch] if shape.static_batch else [1, VERIFY_BATCH]
    return verification_batches(target.preprocess, verify_data, sizes)


def export_onnx(checkpoint: Path | str, input_size: tuple[int, int] | None = None,
                output: Path | str | None = None, opset: int = DEFAULT_OPSET,
                verify: bool = True, shape: ExportShape | None = None,
                overwrite: bool = False, data: Path | str | None = None,
                progress: bool = True, config: Path | str | None = None,
                model_name: str | None = None, num_classes: int | None = None,
                device: str = "cpu") -> ExportOutcome:
    """``config`` / ``model_name`` / ``num_classes``: for checkpoints of the original
    pochitrain (``pochitrain.checkpoint``); ``device``: where the checkpoint is loaded
    (checked, then the export itself runs on the CPU)."""
    from pochitrain import __version__
    from pochitrain.arguments import file_argument
    from pochitrain.checkpoint import checkpoint_file, load_model
    from pochitrain.config import resolve_device
    from pochitrain.onnx.export import check_opset

    checkpoint = checkpoint_file(file_argument("checkpoint", checkpoint,
                                               "'models/best_epoch10.pth'"))
    shape = shape or ExportShape()
    check_opset(opset)
    out = _output_path(checkpoint, output, input_size, overwrite)
    resolve_device(device, flag="--device")
    model, meta = load_model(checkpoint, config=config, verb="export-onnx",
                             model_name=model_name, num_classes=num_classes)
    target = _export_meta(meta, checkpoint, input_size)
    hw = (target.input_size[0], target.input_size[1])
    # read the images first: a bad --data fails before the (slow) export
    batches, inputs = (_verification_inputs(checkpoint, data, target, shape) if verify
                       else ([], ""))
    with atomic_path(out, replace=overwrite) as tmp:  # the name must still be free
        with console().status(f"Exporting {meta.model_name} to ONNX (opset {opset})..."):
            export_model(model, tmp, target, hw, shape, opset, producer_version=__version__)
        report = None
        if verify:
            from pochitrain.onnx.verify import verify_export

            report = verify_export(tmp, model, batches, inputs, progress=progress)
    return ExportOutcome(out, target, shape.input_shape(*hw), report)

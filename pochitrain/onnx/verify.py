"""Check an exported ONNX file: onnx.checker, then ONNX Runtime against PyTorch.

FP32 tolerance: max |logit difference| <= ``REL_TOL * max(1, max |PyTorch logit|)``, and the
same top-1 on every image except near-ties (PyTorch's top-2 margin below twice that difference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pochitrain.batching import stack_one_size
from pochitrain.errors import DataError, ModelFileError, VerificationError, first_line
from pochitrain.preprocess import Preprocess

if TYPE_CHECKING:
    import onnxruntime as ort
    from torch import nn

REL_TOL = 1e-3


@dataclass
class BatchCheck:
    batch_size: int  # also the number of images
    max_abs_diff: float
    tolerance: float
    agree: int
    real_mismatches: int  # top-1 differences that are not near-ties

    @property
    def images(self) -> int:
        return self.batch_size

    @property
    def agreement(self) -> float:
        return self.agree / self.images if self.images else 1.0

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.real_mismatches == 0


@dataclass
class VerifyReport:
    inputs: str  # where the inputs came from, for the summary
    checks: list[BatchCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def check_graph(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        raise VerificationError(
            "onnx.checker がエクスポートしたモデルを受け付けませんでした\n"
            f"onnx.checker rejected the exported model: {first_line(exc)}",
            "Try the default --opset 17; report the model name if it persists.",
        ) from exc


def compare_batch(model: nn.Module, session: ort.InferenceSession, batch: np.ndarray
                  ) -> BatchCheck:
    """Run one NCHW float32 batch through PyTorch and the ONNX Runtime session."""
    import torch

    with torch.inference_mode():
        ref = model(torch.from_numpy(np.ascontiguousarray(batch))).float().numpy()
    name = session.get_inputs()[0].name
    try:  # the whole batch in one call: this checks the dynamic batch axis itself
        got = np.asarray(session.run(None, {name: np.ascontiguousarray(batch)})[0],
                         dtype=np.float32)
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise VerificationError(
            "ONNX Runtime でエクスポートしたグラフを実行できませんでした\n"
            f"ONNX Runtime could not run the exported graph on a batch of {len(batch)}: "
            f"{first_line(exc)}",
            "Re-export without custom shape options and report the model name.") from exc
    if got.shape != ref.shape:
        raise VerificationError(
            "ONNX Runtime と PyTorch の出力の形状が違います\n"
            f"ONNX Runtime returned shape {list(got.shape)}, PyTorch {list(ref.shape)} for a "
            f"batch of {len(batch)}.",
            "The dynamic batch axis does not work in the exported graph; re-export without "
            "custom shape options and report the model name.",
        )
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    max_diff = float(diff.max()) if diff.size else 0.0
    tol = REL_TOL * max(1.0, float(np.abs(ref).max()))
    ref_top, got_top = ref.argmax(axis=1), got.argmax(axis=1)
    agree = int((ref_top == got_top).sum())
    real = 0
    if ref.shape[1] > 1:
        top2 = np.sort(ref, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        real = int(((ref_top != got_top) & (margin > 2 * max(max_diff, 1e-7))).sum())
    return BatchCheck(len(batch), max_diff, tol, agree, real)


def verify_export(path: Path, model: nn.Module, batches: list[np.ndarray], inputs: str,
                  progress: bool = True) -> VerifyReport:
    """onnx.checker + ONNX Runtime (CPU) vs PyTorch on each batch; raise on mismatch."""
    from pochitrain.console import progress_bar
    from pochitrain.onnx.session import open_session

    check_graph(path)
    try:
        session = open_session(path)
    except ModelFileError as exc:
        raise VerificationError("エクスポートしたファイルを ONNX Runtime で開けません\n"
                                f"The exported file does not open in ONNX Runtime:\n{exc.message}",
                                exc.remedy) from exc
    report = VerifyReport(inputs)
    with progress_bar(progress, "verify (ONNX Runtime vs PyTorch)", len(batches)) as advance:
        for batch in batches:
            report.checks.append(compare_batch(model, session, batch))
            advance(1)
    bad = [c for c in report.checks if not c.ok]
    if bad:
        c = bad[0]
        raise VerificationError(
            "ONNX Runtime と PyTorch の出力が一致しません\n"
            f"ONNX Runtime and PyTorch disagree at batch {c.batch_size}: max abs diff "
            f"{c.max_abs_diff:.3g} (tolerance {c.tolerance:.3g}), top-1 agreement "
            f"{c.agreement:.1%}. The ONNX file was not written.",
            "Try another --opset, or check the model for ops that differ between runtimes "
            "(--skip-verify writes the file anyway, at your own risk).",
        )
    return report


def verification_batches(pre: Preprocess, data: Path | None, sizes: list[int],
                         ) -> tuple[list[np.ndarray], str]:
    """One batch per size, from real images of ``data`` when it has any, else random."""
    from pochitrain.data import open_rgb, scan_image_folder

    need = sum(sizes)
    arrays: list[np.ndarray] = []
    names: list[object] = []
    source = "random inputs"
    if data is not None:
        folder = scan_image_folder(data, "verification data folder")
        samples = folder.samples
        # spread the picks over the sorted list so every class folder contributes
        step = max(1, len(samples) // need)
        for path, _ in samples[::step]:
            image = open_rgb(path)
            if image is not None:
                arrays.append(pre(image))
                names.append(path)
            if len(arrays) == need:
                break
        if not arrays:
            raise DataError("エクスポートの検証に使える画像がありません\n"
                            f"No readable images in {data} to verify the export with.",
                            "Point --data (export-onnx) or --verify-data (convert --fp16) "
                            "at a folder of images; export-onnx also takes --skip-verify.")
        source = f"{len(arrays)} images from {data}"
        arrays += [arrays[0]] * (need - len(arrays))  # small folders: the first image again
        names += [names[0]] * (need - len(names))
    else:
        rng = np.random.default_rng(0)
        h, w = pre.input_size
        arrays = list(rng.standard_normal((need, 3, h, w), dtype=np.float32))
        names = ["random input"] * need
    whole = stack_one_size(arrays, names).astype(np.float32)
    return np.split(whole, np.cumsum(sizes)[:-1]), source

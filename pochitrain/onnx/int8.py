"""INT8 as explicit quantization: calibrate on the CPU into a Q/DQ ONNX graph, check it, keep it.

TensorRT 11 dropped implicit INT8 calibrators; a strongly typed network built from a graph with
QuantizeLinear/DequantizeLinear nodes works on TensorRT 10, 11 and TensorRT-RTX alike.

``prepare_int8`` (called by ``pochi convert --int8``):
  1. calibration images and preprocessing (calibration.resolve_source);
  2. seeded, stratified split into calibration images and held-out images;
  3. cache check: ``<stem>_int8_qdq.onnx`` + ``<stem>_int8_qdq.json`` (the key) are reused only
     when every key field matches;
  4. ONNX Runtime ``quantize_static`` (QDQ, symmetric int8, per-channel weights, float biases:
     TensorRT's parser rejects int32-quantized biases);
  5. FP32 and Q/DQ graphs run in ONNX Runtime on the held-out images; a top-1 drop above
     ``max_accuracy_drop`` points *beyond its statistical uncertainty* (paired per-image
     differences, one-sided 95%) raises VerificationError and nothing is written.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pochitrain.console import info as say
from pochitrain.console import warn
from pochitrain.errors import CalibrationError, UsageError, VerificationError
from pochitrain.meta import ModelMeta, file_sha256
from pochitrain.onnx import calibration as cal
from pochitrain.onnx.inspect import OnnxInfo

# name -> (ORT CalibrationMethod member, extra options). Measured on the digits (README_int8).
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "percentile": ("Percentile", {"CalibPercentile": 99.999}),
    "entropy": ("Entropy", {}),
    "minmax": ("MinMax", {}),
}
DEFAULT_METHOD = "percentile"
DEFAULT_SAMPLES = 500
DEFAULT_MAX_DROP = 1.0  # top-1 points; held-out sets are small, one image can be ~1 point
DEFAULT_VERIFY_SAMPLES = 1000


@dataclass
class Int8Options:
    calib_data: Path | None
    calib_samples: int = DEFAULT_SAMPLES
    calib_batch_size: int = 1
    calib_method: str = DEFAULT_METHOD
    config_path: Path | None = None
    max_accuracy_drop: float = DEFAULT_MAX_DROP
    use_cache: bool = True
    verify_samples: int = DEFAULT_VERIFY_SAMPLES


def key_path(qdq_path: Path) -> Path:
    """The cache key written beside the Q/DQ graph: ``<stem>_int8_qdq.json``."""
    return qdq_path.with_suffix(".json")


def check_options(opts: Int8Options) -> None:
    if opts.calib_samples < 1:
        raise UsageError(f"--calib-samples must be 1 or more, got {opts.calib_samples}.",
                         f"Use a few hundred images, e.g. --calib-samples {DEFAULT_SAMPLES}.")
    if opts.calib_batch_size < 1:
        raise UsageError(f"--calib-batch-size must be 1 or more, got {opts.calib_batch_size}.",
                         "Example: --calib-batch-size 8")
    if opts.calib_method not in METHODS:
        raise UsageError(f"Unknown --calib-method {opts.calib_method!r}.",
                         f"Choose one of: {', '.join(METHODS)}")
    if not opts.max_accuracy_drop >= 0:
        raise UsageError(f"--max-accuracy-drop must be 0 or more, got {opts.max_accuracy_drop}.",
                         f"Example: --max-accuracy-drop {DEFAULT_MAX_DROP}")
    if opts.verify_samples < 1:
        raise UsageError(f"--verify-samples must be 1 or more, got {opts.verify_samples}.",
                         f"Example: --verify-samples {DEFAULT_VERIFY_SAMPLES}")


def calibration_batch(info_: OnnxInfo, opts: Int8Options, available: int) -> int:
    """The batch the calibration graph runs with (ONNX Runtime on the CPU, not the engine).

    The engine profile (batch 1) does not limit it; a fixed ONNX batch (pattern 3) does.
    """
    fixed = info_.input_shape[0]
    if isinstance(fixed, int):
        if opts.calib_batch_size != fixed:
            raise UsageError(
                f"--calib-batch-size {opts.calib_batch_size} does not fit {info_.path.name}: its "
                f"batch dimension is fixed at {fixed} (pattern 3), and calibration runs that graph.",
                f"Use --calib-batch-size {fixed} (the default 1 fits batch-1 models).",
            )
        return fixed
    if opts.calib_batch_size > available:
        say(f"  --calib-batch-size {opts.calib_batch_size} is more than the {available} "
             f"calibration images: calibrating in one batch of {available}")
        return available
    return opts.calib_batch_size


def tool_version() -> str:
    import onnxruntime

    return f"onnxruntime.quantization {onnxruntime.__version__}"


def _copy_into(onnx_path: Path, folder: Path) -> Path:
    """A self-contained copy of ``onnx_path`` in ``folder`` (external weights inlined)."""
    import shutil

    import onnx

    dest = folder / f"source_{onnx_path.name}"
    model = onnx.load(str(onnx_path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        onnx.save(onnx.load(str(onnx_path)), str(dest))
    else:
        shutil.copyfile(onnx_path, dest)
    return dest


def quantize(onnx_path: Path, out_path: Path, input_name: str, batches: list[np.ndarray],
             method: str) -> None:
    """Write a Q/DQ graph TensorRT accepts: symmetric int8 (zero point 0), per-channel weights,
    biases left in float (QuantizeBias=False)."""
    import contextlib
    import io
    import logging

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.items, None)
            return None if batch is None else {input_name: batch}

    member, extra = METHODS[method]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs a "pre-process first" hint on every call
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints its histogram progress
            quantize_static(
                str(onnx_path), str(out_path), _Reader(), quant_format=QuantFormat.QDQ,
                per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, member),
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                               "QuantizeBias": False, **extra},
            )
    except Exception as exc:  # ORT raises plain exceptions for graphs it cannot handle
        raise CalibrationError(
            f"ONNX Runtime could not quantize {onnx_path.name}: {type(exc).__name__}: {exc}",
            "Check the ONNX runs in ONNX Runtime (pochi infer-onnx); try another --calib-method.",
        ) from exc
    finally:
        root.setLevel(level)


def _labels(folder_classes: list[str], samples: list[cal.Sample], meta: ModelMeta | None,
            num_outputs: Any) -> np.ndarray | None:
    """Held-out labels in the model's class order, or None when they cannot be trusted."""
    if not folder_classes:
        return None
    if meta is not None:
        if set(folder_classes) != set(meta.class_names):
            return None
        index = {name: i for i, name in enumerate(meta.class_names)}
        return np.array([index[folder_classes[lab]] for _, lab in samples])
    if num_outputs != len(folder_classes):
        return None
    return np.array([lab for _, lab in samples])  # pochitrain trains on sorted folder names


# One-sided 95% normal quantile: the gate fails only when the drop is above the limit with
# 95% confidence, so a held-out set of 70 images (one image = 1.4 points) cannot fail by luck
# while a broken quantization (tens of points) still fails on any set size.
Z_ONE_SIDED_95 = 1.645


def paired_drop(reference_ok: np.ndarray, candidate_ok: np.ndarray) -> dict[str, Any]:
    """Drop of ``candidate`` against ``reference`` on the same images, in points, with its
    standard error from the paired per-image differences (lost = +1, gained = -1)."""
    n = len(reference_ok)
    lost = int(np.sum(reference_ok & ~candidate_ok))
    gained = int(np.sum(~reference_ok & candidate_ok))
    mean = (lost - gained) / n
    var = max((lost + gained) / n - mean * mean, 0.0) * n / max(n - 1, 1)
    se = math.sqrt(var / n)
    return {"drop": round(100 * mean, 3), "drop_se": round(100 * se, 3),
            "drop_low95": round(100 * (mean - Z_ONE_SIDED_95 * se), 3),
            "lost": lost, "gained": gained}


def verify(onnx_path: Path, qdq_path: Path, info_: OnnxInfo, data: np.ndarray,
           labels: np.ndarray | None) -> dict[str, Any]:
    """Top-1 of FP32 and Q/DQ on the held-out images (agreement when there are no labels)."""
    from pochitrain.onnx.session import open_session, run_all, top1_agreement

    fp32, int8 = (run_all(open_session(p), data) for p in (onnx_path, qdq_path))
    agree = top1_agreement(fp32, int8) * 100
    result: dict[str, Any] = {"held_out": len(data), "top1_agreement": round(agree, 3),
                              "max_abs_logit_diff": round(float(np.abs(fp32 - int8).max()), 5)}
    if labels is None:  # every disagreement counts as a loss: an upper bound of the drop
        same = fp32.argmax(1) == int8.argmax(1)
        result.update(metric="agreement", **paired_drop(np.ones_like(same), same))
    else:
        ok32, ok8 = fp32.argmax(1) == labels, int8.argmax(1) == labels
        result.update(metric="top1", top1_fp32=round(float(ok32.mean() * 100), 3),
                      top1_int8=round(float(ok8.mean() * 100), 3), **paired_drop(ok32, ok8))
    return result


def _measured(acc: dict[str, Any], threshold: float) -> str:
    """What the gate saw, in one sentence (used in the log line and in the error)."""
    n = acc["held_out"]
    if acc["metric"] == "top1":
        head = (f"top-1 on {n} held-out images: FP32 {acc['top1_fp32']:.2f}%, INT8 "
                f"{acc['top1_int8']:.2f}%")
    else:
        head = (f"top-1 agreement with FP32 on {n} held-out unlabelled images: "
                f"{acc['top1_agreement']:.2f}%")
    se = acc.get("drop_se", 0.0)
    return (f"{head}; drop {acc['drop']:+.2f} ± {se:.2f} points ({acc.get('lost', '?')} lost, "
            f"{acc.get('gained', '?')} gained; one image = {100 / max(n, 1):.2f} points), "
            f"limit {threshold:g}")


def _say_accuracy(acc: dict[str, Any], threshold: float) -> None:
    say(f"INT8 check: {_measured(acc, threshold)}")


def _check_drop(acc: dict[str, Any], threshold: float, cached: bool = False) -> None:
    """Fail when the drop is above ``threshold`` beyond its 95% one-sided uncertainty."""
    low = acc.get("drop_low95", acc["drop"])  # caches written before the paired statistics
    if low > threshold:
        raise VerificationError(
            f"INT8 の精度低下が大きすぎます / The INT8 graph loses too much accuracy: "
            f"{_measured(acc, threshold)}; even allowing for the uncertainty of {acc['held_out']} "
            f"images the drop is at least {low:.2f} points. No engine was built"
            + (" (cached calibration result)." if cached else " and no Q/DQ graph kept."),
            "Try another --calib-method (percentile, entropy, minmax), more --calib-samples, "
            "calibration images closer to the real inputs, or --fp16; raise "
            "--max-accuracy-drop only if the loss is acceptable.",
        )


def prepare_int8(onnx_path: Path, info: OnnxInfo, input_shape: tuple[int, int, int, int],
                 meta: ModelMeta | None, opts: Int8Options, qdq_path: Path) -> dict[str, Any]:
    """Write the calibrated Q/DQ ONNX to ``qdq_path`` (atomically) and return the record."""
    from pochitrain.workspace import atomic_path, atomic_write_text

    onnx_path, qdq_path = Path(onnx_path), Path(qdq_path)
    check_options(opts)
    hw = (int(input_shape[2]), int(input_shape[3]))
    src = cal.resolve_source(onnx_path, meta if meta is not None else info.meta,
                             opts.calib_data, opts.config_path, hw)
    folder = cal.scan_calibration_folder(src.data_root)
    pool, held = cal.split_samples(folder)
    if not pool:
        raise cal.not_found(src.data_root, "too few images to keep some for the accuracy check")
    batch = calibration_batch(info, opts, min(opts.calib_samples, len(pool)))
    say(f"calibration data: {src.data_root} ({src.data_from}, {len(folder.samples)} images, "
         f"{len(folder.classes) or 'no'} class folders); preprocessing from {src.preprocess_from}")

    key = {
        "onnx_sha256": file_sha256(onnx_path),
        "input_shape": [int(v) for v in input_shape],
        "preprocess": src.preprocess.to_dict(),
        "images_fingerprint": folder.fingerprint(),
        "calib_samples": opts.calib_samples,
        "calib_batch_size": batch,
        "calib_method": opts.calib_method,
        "verify_samples": opts.verify_samples,
        "selection": {"seed": cal.SEED, "holdout_fraction": cal.HOLDOUT_FRACTION,
                      "version": cal.SELECTION_VERSION},
        "tool": tool_version(),
    }
    keyfile = key_path(qdq_path)
    stored = cal.read_key(keyfile) if keyfile.is_file() and qdq_path.is_file() else None
    reason = cal.describe_change(stored.get("key") if stored else None, key)
    if stored is not None and reason is None and stored.get("qdq_sha256") != file_sha256(qdq_path):
        reason = f"{qdq_path.name} was modified after calibration"
    if not opts.use_cache:
        reason = "cache disabled (--no-calib-cache)"
    if reason is None and stored is not None and isinstance(stored.get("record"), dict):
        cached = dict(stored["record"])
        cached["cache"] = {"status": "hit", "key_file": str(keyfile)}
        say(f"INT8 calibration cache hit: reusing {qdq_path.name} (same ONNX, preprocessing, "
             "images, samples, batch size and method)")
        _say_accuracy(cached["accuracy"], opts.max_accuracy_drop)
        _check_drop(cached["accuracy"], opts.max_accuracy_drop, cached=True)
        cached["accuracy"]["max_accuracy_drop"] = opts.max_accuracy_drop
        return cached
    say(f"INT8 calibration: {reason}")

    start = time.perf_counter()
    data, used, corrupt = cal.load_images(pool, opts.calib_samples, src.preprocess,
                                          "calibration images")
    if corrupt:
        warn(f"skipped {len(corrupt)} corrupt calibration image(s), e.g. {corrupt[0]}")
    if len(used) == 0:
        raise cal.not_found(src.data_root, f"none of the {len(corrupt)} images could be decoded")
    if len(used) < opts.calib_samples:
        say(f"  only {len(used)} calibration images available (asked for "
             f"{opts.calib_samples}; {len(held)} more are held out for the accuracy check): "
             "using all of them")
    if isinstance(info.input_shape[0], int) and len(used) < batch:
        raise cal.not_found(src.data_root, f"{len(used)} usable image(s), fewer than the batch of "
                            f"{batch} that {onnx_path.name} is fixed at")
    batch = min(batch, len(used))
    n_used = len(used) - len(used) % batch
    if n_used < len(used):
        say(f"  calibrating on {n_used} images: full batches of {batch} only "
             f"({len(used) - n_used} left over)")
    used = used[:n_used]
    batches = [data[i:i + batch] for i in range(0, n_used, batch)]

    # held-out: the reserved images plus pool images not calibrated on (never a calibration one)
    skip = {p for p, _ in used} | set(corrupt)
    held_candidates = cal.stratified_order(held + [s for s in pool if s[0] not in skip])
    with tempfile.TemporaryDirectory(prefix="pochi-int8-") as tmp:
        tmp_qdq = Path(tmp) / qdq_path.name
        say(f"  quantizing with {tool_version()} ({opts.calib_method}, {n_used} images, "
             f"batch {batch})")
        # ONNX Runtime writes helper files beside its input: give it a copy in the temp folder
        # (the ONNX's own folder may be read-only)
        quantize(_copy_into(onnx_path, Path(tmp)), tmp_qdq, info.input_name, batches,
                 opts.calib_method)
        calib_seconds = time.perf_counter() - start
        held_data, held_used, held_corrupt = cal.load_images(
            held_candidates, opts.verify_samples, src.preprocess, "held-out images")
        if len(held_used) == 0:
            raise cal.not_found(src.data_root, "no decodable images left for the accuracy check")
        labels = _labels(folder.classes, held_used, meta or info.meta, info.output_shape[1])
        acc = verify(onnx_path, tmp_qdq, info, held_data, labels)
        acc["max_accuracy_drop"] = opts.max_accuracy_drop
        _say_accuracy(acc, opts.max_accuracy_drop)
        _check_drop(acc, opts.max_accuracy_drop)
        with atomic_path(qdq_path) as out:
            out.write_bytes(tmp_qdq.read_bytes())

    record: dict[str, Any] = {
        "method": opts.calib_method,
        "method_options": {"per_channel_weights": True, "symmetric": True,
                           "quantize_bias": False, **METHODS[opts.calib_method][1]},
        "samples_requested": opts.calib_samples,
        "samples_used": n_used,
        "batch_size": batch,
        "corrupt_skipped": len(corrupt) + len(held_corrupt),
        "data": {"path": str(src.data_root.resolve()), "from": src.data_from,
                 "fingerprint": key["images_fingerprint"],
                 "calibration_images_sha256": cal.list_sha256(used, folder.root)},
        "preprocess_from": src.preprocess_from,
        "accuracy": acc,
        "calibration_seconds": round(calib_seconds, 2),
        "qdq_graph": str(qdq_path.resolve()),
        "tool": key["tool"],
    }
    atomic_write_text(keyfile, json.dumps(
        {"key": key, "qdq_sha256": file_sha256(qdq_path), "record": record}, indent=2,
        ensure_ascii=False))
    record["cache"] = {"status": "miss", "reason": reason, "key_file": str(keyfile)}
    say(f"INT8 Q/DQ graph: {qdq_path} ({n_used} images calibrated in {calib_seconds:.1f} s)")
    return record


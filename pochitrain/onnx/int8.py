"""INT8 as explicit quantization: calibrate on the CPU into a Q/DQ ONNX graph, check it, keep it.

TensorRT 11 dropped implicit INT8 calibrators; a strongly typed network built from a graph with
QuantizeLinear/DequantizeLinear nodes works on TensorRT 10, 11 and TensorRT-RTX alike. The graph
(``<stem>_int8_qdq.onnx``, its cache key beside it) is reused only when every key field matches,
and written only when it passes the accuracy gate of ``int8_check``.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pochitrain.console import info as say
from pochitrain.console import warn
from pochitrain.data import ImageFolder
from pochitrain.errors import CalibrationError, UsageError
from pochitrain.meta import ModelMeta, file_sha256
from pochitrain.onnx import calibration as cal
from pochitrain.onnx.inspect import OnnxInfo
from pochitrain.onnx.int8_check import check_drop, held_out_labels, say_accuracy, verify
from pochitrain.onnx.int8_defaults import (
    CALIB_METHODS,
    DEFAULT_CALIB_BATCH_SIZE,
    DEFAULT_MAX_DROP,
    DEFAULT_METHOD,
    DEFAULT_SAMPLES,
    DEFAULT_VERIFY_SAMPLES,
)
from pochitrain.workspace import atomic_path, atomic_write_text, read_json_dict

# name -> (ORT CalibrationMethod member, extra options), in the order of CALIB_METHODS
METHODS: dict[str, tuple[str, dict[str, Any]]] = dict(zip(CALIB_METHODS, (
    ("Percentile", {"CalibPercentile": 99.999}),
    ("Entropy", {}),
    ("MinMax", {}),
)))


@dataclass
class Int8Options:
    calib_data: Path | None
    calib_samples: int = DEFAULT_SAMPLES
    calib_batch_size: int = DEFAULT_CALIB_BATCH_SIZE
    calib_method: str = DEFAULT_METHOD
    config_path: Path | None = None
    max_accuracy_drop: float = DEFAULT_MAX_DROP
    use_cache: bool = True
    verify_samples: int = DEFAULT_VERIFY_SAMPLES


def key_path(qdq_path: Path) -> Path:
    """The cache key written beside the Q/DQ graph: ``<stem>_int8_qdq.json``."""
    return qdq_path.with_suffix(".json")


def check_options(opts: Int8Options) -> None:
    for flag, value, remedy in (
            ("--calib-samples", opts.calib_samples,
             f"Use a few hundred images, e.g. --calib-samples {DEFAULT_SAMPLES}."),
            ("--calib-batch-size", opts.calib_batch_size, "Example: --calib-batch-size 8"),
            ("--verify-samples", opts.verify_samples,
             f"Example: --verify-samples {DEFAULT_VERIFY_SAMPLES}")):
        if value < 1:
            raise UsageError(f"{flag} は 1 以上にしてください\n"
                             f"{flag} must be 1 or more, got {value}.", remedy)
    if opts.calib_method not in METHODS:
        raise UsageError("不明な --calib-method が指定されています\n"
                         f"Unknown --calib-method {opts.calib_method!r}.",
                         f"Choose one of: {', '.join(METHODS)}")
    if not opts.max_accuracy_drop >= 0:
        raise UsageError("--max-accuracy-drop は 0 以上にしてください\n"
                         f"--max-accuracy-drop must be 0 or more, got {opts.max_accuracy_drop}.",
                         f"Example: --max-accuracy-drop {DEFAULT_MAX_DROP}")


def calibration_batch(info_: OnnxInfo, opts: Int8Options, available: int) -> int:
    """The batch ONNX Runtime calibrates with: the engine profile does not limit it, a fixed
    ONNX batch (pattern 3) does."""
    fixed = info_.input_shape[0]
    if isinstance(fixed, int):
        if opts.calib_batch_size != fixed:
            raise UsageError(
                "--calib-batch-size がモデルの固定バッチサイズと合いません\n"
                f"--calib-batch-size {opts.calib_batch_size} does not fit {info_.path.name}: its "
                f"batch dimension is fixed at {fixed} (pattern 3), and calibration runs that graph.",
                f"Use --calib-batch-size {fixed} (the default {DEFAULT_CALIB_BATCH_SIZE} fits "
                "batch-1 models).",
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
        # NumPy's words when a tensor varies less than its histogram's bins can resolve
        narrow = "finite-sized bins" in str(exc) and method != "minmax"
        raise CalibrationError(
            "ONNX Runtime で量子化できませんでした\n"
            f"ONNX Runtime could not quantize {onnx_path.name}: {type(exc).__name__}: {exc}",
            f"Some activations hardly vary over these images, too little for the {method} "
            "histogram: pass --calib-method minmax, or more and more varied --calib-data images."
            if narrow else
            "Check the ONNX runs in ONNX Runtime (pochi infer-onnx); try another --calib-method.",
        ) from exc
    finally:
        root.setLevel(level)


@dataclass
class _Images:
    """The calibration folder, split into calibration candidates and held-out images."""
    source: cal.CalibSource
    folder: ImageFolder
    pool: list[cal.Sample]
    held: list[cal.Sample]
    batch: int


class _Calibration(NamedTuple):
    batches: list[np.ndarray]
    used: list[cal.Sample]  # the images calibrated on (full batches only)
    corrupt: list[Path]
    batch: int


class _Checked(NamedTuple):
    accuracy: dict[str, Any]
    seconds: float  # calibration, quantization included
    held_corrupt: int


def _find_images(onnx_path: Path, info: OnnxInfo, input_shape: tuple[int, int, int, int],
                 meta: ModelMeta | None, opts: Int8Options) -> _Images:
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
    return _Images(src, folder, pool, held, batch)


def _cache_key(onnx_path: Path, input_shape: tuple[int, int, int, int], images: _Images,
               opts: Int8Options) -> dict[str, Any]:
    """Every input of the calibration: a cached Q/DQ graph is reused only when all match."""
    return {
        "onnx_sha256": file_sha256(onnx_path),
        "input_shape": [int(v) for v in input_shape],
        "preprocess": images.source.preprocess.to_dict(),
        "images_fingerprint": images.folder.fingerprint(),
        "calib_samples": opts.calib_samples,
        "calib_batch_size": images.batch,
        "calib_method": opts.calib_method,
        "verify_samples": opts.verify_samples,
        "selection": {"seed": cal.SEED, "holdout_fraction": cal.HOLDOUT_FRACTION,
                      "version": cal.SELECTION_VERSION},
        "tool": tool_version(),
    }


def _cached_record(qdq_path: Path, key: dict[str, Any],
                   opts: Int8Options) -> tuple[dict[str, Any] | None, str | None]:
    """(the cached record, None) when it holds this calibration and still passes the
    accuracy gate; else (None, why it is not used)."""
    keyfile = key_path(qdq_path)
    stored = read_json_dict(keyfile) if qdq_path.is_file() else None
    reason = cal.describe_change(stored.get("key") if stored else None, key)
    if stored is not None and reason is None and stored.get("qdq_sha256") != file_sha256(qdq_path):
        reason = f"{qdq_path.name} was modified after calibration"
    if not opts.use_cache:
        reason = "cache disabled (--no-calib-cache)"
    if reason is not None or stored is None or not isinstance(stored.get("record"), dict):
        return None, reason
    cached = dict(stored["record"])
    cached["cache"] = {"status": "hit", "key_file": str(keyfile)}
    say(f"INT8 calibration cache hit: reusing {qdq_path.name} (same ONNX, preprocessing, "
         "images, samples, batch size and method)")
    say_accuracy(cached["accuracy"], opts.max_accuracy_drop)
    check_drop(cached["accuracy"], opts.max_accuracy_drop, cached=True)
    cached["accuracy"]["max_accuracy_drop"] = opts.max_accuracy_drop
    return cached, None


def _calibration_batches(onnx_path: Path, info: OnnxInfo, images: _Images,
                         opts: Int8Options) -> _Calibration:
    """Decode the calibration images; only full batches are kept."""
    root = images.source.data_root
    data, used, corrupt = cal.load_images(images.pool, opts.calib_samples,
                                          images.source.preprocess, "calibration images")
    if corrupt:
        warn(f"skipped {len(corrupt)} corrupt calibration image(s), e.g. {corrupt[0]}")
    if len(used) == 0:
        raise cal.not_found(root, f"none of the {len(corrupt)} images could be decoded")
    if len(used) < opts.calib_samples:
        say(f"  only {len(used)} calibration images available (asked for "
             f"{opts.calib_samples}; {len(images.held)} more are held out for the accuracy "
             "check): using all of them")
    if isinstance(info.input_shape[0], int) and len(used) < images.batch:
        raise cal.not_found(root, f"{len(used)} usable image(s), fewer than the batch of "
                            f"{images.batch} that {onnx_path.name} is fixed at")
    batch = min(images.batch, len(used))
    n_used = len(used) - len(used) % batch
    if n_used < len(used):
        say(f"  calibrating on {n_used} images: full batches of {batch} only "
             f"({len(used) - n_used} left over)")
    batches = [data[i:i + batch] for i in range(0, n_used, batch)]
    return _Calibration(batches, used[:n_used], corrupt, batch)


def _quantize_checked(onnx_path: Path, info: OnnxInfo, meta: ModelMeta | None,
                      qdq_path: Path, images: _Images, calib: _Calibration,
                      opts: Int8Options, start: float) -> _Checked:
    """Quantize into a temp folder, run the accuracy gate, then move the graph to
    ``qdq_path``; a graph that fails the gate is never written."""
    # held-out: the reserved images plus pool images not calibrated on (never a calibration one)
    skip = {p for p, _ in calib.used} | set(calib.corrupt)
    held_candidates = cal.stratified_order(images.held
                                           + [s for s in images.pool if s[0] not in skip])
    with tempfile.TemporaryDirectory(prefix="pochi-int8-") as tmp:
        tmp_qdq = Path(tmp) / qdq_path.name
        say(f"  quantizing with {tool_version()} ({opts.calib_method}, {len(calib.used)} "
             f"images, batch {calib.batch})")
        # ONNX Runtime writes helper files beside its input: give it a copy in the temp folder
        # (the ONNX's own folder may be read-only)
        quantize(_copy_into(onnx_path, Path(tmp)), tmp_qdq, info.input_name, calib.batches,
                 opts.calib_method)
        seconds = time.perf_counter() - start
        held_data, held_used, held_corrupt = cal.load_images(
            held_candidates, opts.verify_samples, images.source.preprocess, "held-out images")
        if len(held_used) == 0:
            raise cal.not_found(images.source.data_root,
                                "no decodable images left for the accuracy check")
        labels = held_out_labels(images.folder.classes, held_used, meta or info.meta,
                                 info.output_shape[1])
        acc = verify(onnx_path, tmp_qdq, held_data, labels)
        acc["max_accuracy_drop"] = opts.max_accuracy_drop
        say_accuracy(acc, opts.max_accuracy_drop)
        check_drop(acc, opts.max_accuracy_drop)
        with atomic_path(qdq_path) as out:
            out.write_bytes(tmp_qdq.read_bytes())
    return _Checked(acc, seconds, len(held_corrupt))


def _record(opts: Int8Options, images: _Images, calib: _Calibration, checked: _Checked,
            qdq_path: Path, key: dict[str, Any]) -> dict[str, Any]:
    """What the engine's sidecar and the cache key file say about the calibration."""
    return {
        "method": opts.calib_method,
        "method_options": {"per_channel_weights": True, "symmetric": True,
                           "quantize_bias": False, **METHODS[opts.calib_method][1]},
        "samples_requested": opts.calib_samples,
        "samples_used": len(calib.used),
        "batch_size": calib.batch,
        "corrupt_skipped": len(calib.corrupt) + checked.held_corrupt,
        "data": {"path": str(images.source.data_root.resolve()),
                 "from": images.source.data_from,
                 "fingerprint": key["images_fingerprint"],
                 "calibration_images_sha256": cal.list_sha256(calib.used, images.folder.root)},
        "preprocess_from": images.source.preprocess_from,
        "accuracy": checked.accuracy,
        "calibration_seconds": round(checked.seconds, 2),
        "qdq_graph": str(qdq_path.resolve()),
        "tool": key["tool"],
    }


def prepare_int8(onnx_path: Path, info: OnnxInfo, input_shape: tuple[int, int, int, int],
                 meta: ModelMeta | None, opts: Int8Options, qdq_path: Path) -> dict[str, Any]:
    """Write the calibrated Q/DQ ONNX to ``qdq_path`` (atomically) and return the record."""
    onnx_path, qdq_path = Path(onnx_path), Path(qdq_path)
    check_options(opts)
    images = _find_images(onnx_path, info, input_shape, meta, opts)
    key = _cache_key(onnx_path, input_shape, images, opts)
    cached, reason = _cached_record(qdq_path, key, opts)
    if cached is not None:
        return cached
    say(f"INT8 calibration: {reason}")
    start = time.perf_counter()
    calib = _calibration_batches(onnx_path, info, images, opts)
    checked = _quantize_checked(onnx_path, info, meta, qdq_path, images, calib, opts, start)
    record = _record(opts, images, calib, checked, qdq_path, key)
    keyfile = key_path(qdq_path)
    atomic_write_text(keyfile, json.dumps(
        {"key": key, "qdq_sha256": file_sha256(qdq_path), "record": record}, indent=2,
        ensure_ascii=False))
    record["cache"] = {"status": "miss", "reason": reason, "key_file": str(keyfile)}
    say(f"INT8 Q/DQ graph: {qdq_path} ({len(calib.used)} images calibrated in "
         f"{checked.seconds:.1f} s)")
    return record

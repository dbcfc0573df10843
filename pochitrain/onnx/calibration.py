"""Calibration data for the INT8 pass: where it comes from, which images, and the cache key.

Deterministic: the same folder, options and ONNX give the same calibration and held-out images
and the same cache key on every machine. ``HOLDOUT_FRACTION`` of every class is never
calibrated on; both lists are interleaved over classes so that any prefix is stratified.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pochitrain.batching import stack_one_size
from pochitrain.data import ImageFolder, open_rgb
from pochitrain.errors import CalibrationError, PochiError, english_part
from pochitrain.meta import ModelMeta
from pochitrain.preprocess import Preprocess

SEED = 0
HOLDOUT_FRACTION = 0.2
SELECTION_VERSION = 1  # bump when the selection rule changes: old caches become stale

NO_DATA_JA = "--calib-data を指定するか, configに val_data_rootを設定してください"
NO_CALIBRATOR_JA = "calibratorが必須です"
NOT_FOUND_JA = "キャリブレーションデータが見つかりません"

Sample = tuple[Path, int]


@dataclass
class CalibSource:
    data_root: Path
    data_from: str  # "--calib-data" or "val_data_root of <config>"
    preprocess: Preprocess
    preprocess_from: str  # "model metadata" or "val_transform of config <path>"
    config_path: Path | None


def resolve_source(onnx_path: Path, meta: ModelMeta | None, calib_data: Path | None,
                   config_path: Path | None, hw: tuple[int, int]) -> CalibSource:
    """Calibration folder (``--calib-data``, else the config's val_data_root) and
    preprocessing (``resolve.resolve_context``) at the engine's input ``hw``."""
    from pochitrain.resolve import NoPreprocessingError, RunConfig, resolve_context

    run_config = RunConfig.for_model(onnx_path, config_path)  # executed at most once
    where = f"config {run_config.path}" if run_config.path else None
    if calib_data is not None:
        data_root, data_from = Path(calib_data), "--calib-data"
    else:
        root = getattr(run_config.settings, "val_data_root", None)
        if not root:
            why = (f"{where} has no val_data_root" if where else
                   f"no config was given (-c) or found beside {onnx_path.name}")
            raise CalibrationError(
                f"{NO_CALIBRATOR_JA}: {NO_DATA_JA}\n"
                f"INT8 needs a calibrator, i.e. calibration images: no --calib-data was given "
                f"and {why}.",
                "Pass --calib-data DIR (a few hundred images like the training data, flat or "
                "one sub-folder per class), or -c CONFIG with val_data_root set.",
            )
        data_root, data_from = Path(root), f"val_data_root of {where}"
    try:
        resolved = resolve_context(onnx_path, meta, run_config, need_class_names=False)
    except NoPreprocessingError as exc:  # the spec's INT8 error, as a calibration failure
        raise CalibrationError(exc.message, exc.remedy) from exc
    # pattern 2 built at another --input-size: same steps, geometry rescaled
    pre = resolved.meta.preprocess.resized_to(hw)
    return CalibSource(data_root, data_from, pre, resolved.preprocess_from, run_config.path)


def scan_calibration_folder(root: Path) -> ImageFolder:
    """The calibration folder; a missing or empty one is the spec's 'not found' error."""
    from pochitrain.data import scan_image_folder

    try:
        return scan_image_folder(root, "calibration data folder")
    except PochiError as exc:
        raise not_found(root, english_part(exc.message)) from exc


def not_found(root: Path, detail: str) -> CalibrationError:
    return CalibrationError(
        f"{NOT_FOUND_JA}: {root}\nNo usable calibration images: {detail}",
        "Point --calib-data (or the config's val_data_root) at a folder of images "
        "(png/jpg/...), flat or with one sub-folder per class.",
    )


def _interleave(groups: list[list[Sample]]) -> list[Sample]:
    """Merge per-class lists so every prefix keeps the classes' proportions."""
    keyed = [((i + 0.5) / len(g), c, s) for c, g in enumerate(groups) for i, s in enumerate(g)]
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [s for _, _, s in keyed]


def _by_class(samples: list[Sample], rng: np.random.Generator) -> list[list[Sample]]:
    groups: dict[int, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample[1], []).append(sample)
    return [[groups[k][i] for i in rng.permutation(len(groups[k]))] for k in sorted(groups)]


def stratified_order(samples: list[Sample], seed: int = SEED) -> list[Sample]:
    """Seeded shuffle within each class, then interleaved: any prefix is stratified."""
    return _interleave(_by_class(samples, np.random.default_rng(seed)))


def split_samples(folder: ImageFolder, seed: int = SEED) -> tuple[list[Sample], list[Sample]]:
    """(calibration pool, held-out), both stratified; a class of two or more images keeps
    at least one for the held-out set."""
    pools, held = [], []
    for items in _by_class(folder.samples, np.random.default_rng(seed)):
        n_held = 0 if len(items) < 2 else max(1, round(len(items) * HOLDOUT_FRACTION))
        held.append(items[:n_held])
        pools.append(items[n_held:])
    return _interleave([p for p in pools if p]), _interleave([h for h in held if h])


def load_images(candidates: list[Sample], wanted: int, pre: Preprocess, label: str,
                ) -> tuple[np.ndarray, list[Sample], list[Path]]:
    """(float32 N x 3 x H x W, samples used, corrupt paths) of the first ``wanted`` good
    images of ``candidates``: a corrupt file is skipped and the next candidate taken."""
    from pochitrain.console import progress_bar

    arrays: list[np.ndarray] = []
    used: list[Sample] = []
    corrupt: list[Path] = []
    total = min(wanted, len(candidates))
    with progress_bar(True, f"  {label}", total) as advance:
        for path, lab in candidates:
            if len(used) >= wanted:
                break
            image = open_rgb(path)
            if image is None:
                corrupt.append(path)
                continue
            arrays.append(pre(image))
            used.append((path, lab))
            advance(1)
    h, w = pre.input_size
    data = (stack_one_size(arrays, [p for p, _ in used]) if arrays
            else np.zeros((0, 3, h, w), np.float32))
    return data.astype(np.float32, copy=False), used, corrupt


def list_sha256(samples: list[Sample], root: Path) -> str:
    """Hash of which images were used (relative paths), for the record."""
    text = "\n".join(str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
                     for p, _ in samples)
    return hashlib.sha256(text.encode(errors="surrogateescape")).hexdigest()


# ---- cache key -------------------------------------------------------------------------

KEY_FIELDS = ("onnx_sha256", "input_shape", "preprocess", "images_fingerprint",
              "calib_samples", "calib_batch_size", "calib_method", "verify_samples",
              "selection", "tool")


def describe_change(old: dict[str, Any] | None, new: dict[str, Any]) -> str | None:
    """None when the cache key matches; else a short reason naming what changed."""
    if old is None:
        return "no calibration cache yet"
    changed = []
    for name in KEY_FIELDS:
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        if isinstance(after, (int, float, str)) and len(str(after)) < 40 and before is not None:
            changed.append(f"{name} {before} -> {after}")
        else:
            changed.append(f"{name} changed")
    return None if not changed else ", ".join(changed)

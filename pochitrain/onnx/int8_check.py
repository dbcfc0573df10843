"""The INT8 accuracy gate: FP32 and Q/DQ graphs run in ONNX Runtime on the same held-out
images; a top-1 drop above the limit *beyond its statistical uncertainty* (paired per-image
differences, one-sided 95%) fails."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pochitrain.console import info as say
from pochitrain.errors import VerificationError
from pochitrain.meta import ModelMeta
from pochitrain.onnx import calibration as cal


def held_out_labels(folder_classes: list[str], samples: list[cal.Sample], meta: ModelMeta | None,
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


def verify(onnx_path: Path, qdq_path: Path, data: np.ndarray,
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


def measured(acc: dict[str, Any], threshold: float) -> str:
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


def say_accuracy(acc: dict[str, Any], threshold: float) -> None:
    say(f"INT8 check: {measured(acc, threshold)}")


def check_drop(acc: dict[str, Any], threshold: float, cached: bool = False) -> None:
    """Fail when the drop is above ``threshold`` beyond its 95% one-sided uncertainty."""
    low = acc.get("drop_low95", acc["drop"])  # caches written before the paired statistics
    if low > threshold:
        raise VerificationError(
            "INT8 の精度低下が大きすぎます\n"
            f"The INT8 graph loses too much accuracy: "
            f"{measured(acc, threshold)}; even allowing for the uncertainty of {acc['held_out']} "
            f"images the drop is at least {low:.2f} points. No engine was built"
            + (" (cached calibration result)." if cached else " and no Q/DQ graph kept."),
            "Try another --calib-method (percentile, entropy, minmax), more --calib-samples, "
            "calibration images closer to the real inputs, or --fp16; raise "
            "--max-accuracy-drop only if the loss is acceptable.",
        )

"""Classification report and confusion matrix: every class of the model, in model order."""

from __future__ import annotations

import csv
import io

import numpy as np

from pochitrain.reports import InferenceResult
from pochitrain.reports import classification_report_csv, confusion

# "d" is predicted once but has no image; "e" is neither predicted nor present.
NAMES = ["a", "b", "c", "d", "e"]
LABELS = [0, 0, 1, 1, 2, 2]
PREDS = [0, 1, 1, 1, 2, 3]


def _result() -> InferenceResult:
    return InferenceResult("pytorch", list(NAMES), labels=list(LABELS), preds=list(PREDS))


def test_confusion_has_a_row_and_column_for_every_class() -> None:
    expected = np.zeros((5, 5), dtype=np.int64)
    for t, p in zip(LABELS, PREDS):
        expected[t, p] += 1
    assert np.array_equal(confusion(_result()), expected)


def test_report_keeps_zero_support_classes_in_the_macro_average() -> None:
    rows = list(csv.reader(io.StringIO(classification_report_csv(_result()))))
    assert rows[0] == ["class", "precision", "recall", "f1-score", "support"]
    assert [r[0] for r in rows[1:]] == NAMES + ["accuracy", "macro avg", "weighted avg"]
    # per class, by hand: true positives / predicted, true positives / support
    precision = [1.0, 2 / 3, 1.0, 0.0, 0.0]
    recall = [0.5, 1.0, 0.5, 0.0, 0.0]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall)]
    support = [2, 2, 2, 0, 0]
    for i, row in enumerate(rows[1:6]):
        assert row == [NAMES[i], f"{precision[i]:.4f}", f"{recall[i]:.4f}", f"{f1[i]:.4f}",
                       str(support[i])]
    assert rows[6] == ["accuracy", "", "", f"{4 / 6:.4f}", "6"]
    # the macro average divides by all five classes, not by the three with images
    assert rows[7] == ["macro avg", f"{sum(precision) / 5:.4f}", f"{sum(recall) / 5:.4f}",
                       f"{sum(f1) / 5:.4f}", "6"]
    assert rows[7][1] == "0.5333" and rows[7][2] == "0.4000"

    def weighted(xs: list[float]) -> str:
        return f"{sum(x * s for x, s in zip(xs, support)) / 6:.4f}"

    assert rows[8] == ["weighted avg", weighted(precision), weighted(recall), weighted(f1), "6"]

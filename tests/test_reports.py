"""Classification report and confusion matrix: every class of the model, in model order."""

from __future__ import annotations

import csv
import io

import numpy as np

from pochitrain.reports import InferenceResult, classification_report_csv, confusion

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
    # the original's rows, then ours (accuracy) last
    assert [r[0] for r in rows[1:]] == NAMES + ["macro avg", "weighted avg", "accuracy"]
    # per class, by hand: true positives / predicted, true positives / support
    precision = [1.0, 2 / 3, 1.0, 0.0, 0.0]
    recall = [0.5, 1.0, 0.5, 0.0, 0.0]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall)]
    support = [2, 2, 2, 0, 0]
    for i, row in enumerate(rows[1:6]):
        assert row == [NAMES[i], f"{precision[i]:.4f}", f"{recall[i]:.4f}", f"{f1[i]:.4f}",
                       str(support[i])]
    # the macro average counts "d" (predicted, no image) but not "e" (neither): four
    # classes, as the original's scikit-learn call without labels= does
    assert rows[6] == ["macro avg", f"{sum(precision) / 4:.4f}", f"{sum(recall) / 4:.4f}",
                       f"{sum(f1) / 4:.4f}", "6"]
    assert rows[6][1] == "0.6667" and rows[6][2] == "0.5000"

    def weighted(xs: list[float]) -> str:
        return f"{sum(x * s for x, s in zip(xs, support)) / 6:.4f}"

    assert rows[7] == ["weighted avg", weighted(precision), weighted(recall), weighted(f1), "6"]
    assert rows[8] == ["accuracy", "", "", f"{4 / 6:.4f}", "6"]


def test_report_rows_are_the_originals() -> None:
    """Rows 1..n+2 equal what the original's code computes (precision_recall_fscore_support
    per class with labels=, then macro / weighted without), on a spread of predictions."""
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(0)
    names = [str(i) for i in range(7)]
    labels = rng.integers(0, 5, 40).tolist()  # classes 5 and 6 have no image
    preds = [p if rng.random() < 0.6 else int(rng.integers(0, 6)) for p in labels]
    result = InferenceResult("onnx", names, labels=labels, preds=preds)
    rows = list(csv.reader(io.StringIO(classification_report_csv(result))))
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=list(range(7)),
                                                 zero_division=0)
    want = [["class", "precision", "recall", "f1-score", "support"]]
    want += [[n, f"{p[i]:.4f}", f"{r[i]:.4f}", f"{f[i]:.4f}", str(int(s[i]))]
             for i, n in enumerate(names)]
    for row, average in (("macro avg", "macro"), ("weighted avg", "weighted")):
        p2, r2, f2, _ = precision_recall_fscore_support(labels, preds, average=average,
                                                        zero_division=0)
        want.append([row, f"{p2:.4f}", f"{r2:.4f}", f"{f2:.4f}", str(int(sum(s)))])
    assert rows[:len(want)] == want and rows[-1][0] == "accuracy"


def test_top_k_accuracy_counts_the_true_class_among_the_k_most_probable() -> None:
    from pochitrain.batching import true_ranks

    probs = np.array([[0.5, 0.3, 0.1, 0.1],   # true 0: rank 0
                      [0.5, 0.3, 0.15, 0.05],  # true 2: rank 2 (out of the top 2)
                      [0.2, 0.5, 0.25, 0.05],  # true 2: rank 1
                      [0.4, 0.3, 0.2, 0.1]])   # unlabelled
    ranks = true_ranks(probs, [0, 2, 2, -1])
    assert ranks == [0, 2, 1, -1]
    result = InferenceResult("pytorch", ["a", "b", "c", "d"], labels=[0, 2, 2],
                             preds=[0, 0, 1], ranks=ranks[:3])
    assert result.top_k == 3  # k < classes
    assert result.top_k_accuracy == 1.0
    result.class_names = ["a", "b", "c"]
    assert result.top_k == 2 and result.top_k_accuracy == 2 / 3
    result.class_names = ["a", "b"]
    assert result.top_k is None and result.top_k_accuracy is None  # top-1 is all there is


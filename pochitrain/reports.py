"""Result files shared by every runtime: CSV, summary, classification report, confusion matrix.

File names carry the runtime prefix (pytorch_, onnx_, tensorrt_) so results of several
runtimes can sit side by side and be compared line by line.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pochitrain.workspace import atomic_file, atomic_write_text


@dataclass
class InferenceResult:
    """What one run of the inference loop measured and predicted; every file here is
    written from it."""

    runtime: str
    class_names: list[str]
    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)  # -1 when the data is unlabelled
    preds: list[int] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)  # of the true class (0: top-1), -1 unlabelled
    skipped: list[Path] = field(default_factory=list)  # corrupt / unreadable files
    pure_seconds: float = 0.0
    e2e_seconds: float = 0.0
    warmup_samples: int = 0
    batch_size: int = 1

    @property
    def measured(self) -> int:
        return len(self.preds)

    @property
    def labelled(self) -> bool:
        return bool(self.labels) and min(self.labels) >= 0

    @property
    def accuracy(self) -> float | None:
        if not self.labelled:
            return None
        return float(np.mean(np.asarray(self.preds) == np.asarray(self.labels)))

    @property
    def top_k(self) -> int | None:
        """The k of the top-k accuracy: 5, or fewer with 6 classes or less (k < classes);
        None with 2 classes (top-1 is all there is)."""
        k = min(5, len(self.class_names) - 1)
        return k if k >= 2 else None

    @property
    def top_k_accuracy(self) -> float | None:
        """Share of images whose true class is among the k most probable."""
        if not self.labelled or self.top_k is None or len(self.ranks) != self.measured:
            return None
        return float(np.mean(np.asarray(self.ranks) < self.top_k))

    def labels_only(self) -> InferenceResult:
        """A copy with the class names, labels and predictions alone (what the labelled
        reports read): quick to hand to another process, unlike the paths of every image."""
        return replace(self, paths=[], confidences=[], ranks=[], skipped=[])

    def per_image_ms(self, seconds: float) -> float:
        return 1000.0 * seconds / self.measured if self.measured else float("nan")

    def images_per_second(self, seconds: float) -> float:
        return self.measured / seconds if seconds > 0 else float("nan")


RESULT_COLUMNS = ["image_path", "predicted", "predicted_class", "true", "true_class",
                  "confidence", "correct"]


CSV_QUOTED = (",", '"', "\n", "\r")  # a field holding one is quoted by the csv module


def results_csv(result: InferenceResult) -> str:
    """One row per image. Where no path or class name holds a character the csv module
    quotes, the rows are formatted directly (the same text, in a fraction of the time)."""
    names = result.class_names
    paths = [str(p) for p in result.paths]
    if any(c in text for text in ("".join(paths), "".join(names)) for c in CSV_QUOTED):
        return _results_csv_quoted(result, paths)
    rows = [f"{path},{pred},{names[pred]},{label},{names[label]},{conf:.6f},{pred == label}\n"
            if label >= 0 else f"{path},{pred},{names[pred]},,,{conf:.6f},\n"
            for path, pred, label, conf in zip(paths, result.preds, result.labels,
                                               result.confidences)]
    return ",".join(RESULT_COLUMNS) + "\n" + "".join(rows)


def _results_csv_quoted(result: InferenceResult, paths: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RESULT_COLUMNS)
    names = result.class_names
    for path, pred, label, conf in zip(paths, result.preds, result.labels, result.confidences):
        labelled = label >= 0
        w.writerow([path, pred, names[pred], label if labelled else "",
                    names[label] if labelled else "", f"{conf:.6f}",
                    str(pred == label) if labelled else ""])
    return buf.getvalue()


def confusion(result: InferenceResult) -> np.ndarray:
    """Rows: true class, columns: predicted class, every class of the model in order."""
    from sklearn.metrics import confusion_matrix

    labels = list(range(len(result.class_names)))
    return np.asarray(confusion_matrix(result.labels, result.preds, labels=labels))


def classification_report_csv(result: InferenceResult) -> str:
    """The original's rows: precision / recall / f1 / support per class of the model, macro
    and weighted averages (support: all images), then our accuracy row. The macro average
    counts the classes in the labels or the predictions (scikit-learn's rule without
    ``labels=``, the original's); a class neither present nor predicted is listed, not averaged."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels = list(range(len(result.class_names)))
    # arrays: scikit-learn checks and converts a list on every call
    y_true, y_pred = np.asarray(result.labels), np.asarray(result.preds)
    per_class = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "precision", "recall", "f1-score", "support"])
    for i, name in enumerate(result.class_names):
        w.writerow([name, *_scores([float(v[i]) for v in per_class[:3]], int(per_class[3][i]))])
    total = len(result.labels)
    for row, average in (("macro avg", "macro"), ("weighted avg", "weighted")):
        scores = precision_recall_fscore_support(y_true, y_pred, average=average,
                                                 zero_division=0)
        w.writerow([row, *_scores([float(v) for v in scores[:3]], total)])
    w.writerow(["accuracy", "", "", f"{accuracy_score(y_true, y_pred):.4f}", total])
    return buf.getvalue()


def _scores(values: list[float], support: int) -> list[str | int]:
    return [*(f"{v:.4f}" for v in values), support]


def original_summary_lines(result: InferenceResult, info: dict[str, str]) -> list[str]:
    """The original's summary lines, labels, units and decimals as it wrote them (scripts
    parse them); ``精度`` only for labelled data."""
    lines = [f"モデル: {info.get('model', '')}", f"データ: {info.get('data', '')}"]
    size = info.get("input_size", "").split("x")
    if len(size) == 2 and all(v.isdigit() for v in size):  # ours: HxW
        lines += [f"入力解像度: {size[1]}x{size[0]} (WxH)", "入力チャンネル: 3"]
    lines.append(f"サンプル数: {result.measured}")
    if result.accuracy is not None:
        lines.append(f"精度: {100 * result.accuracy:.2f}%")
    pure_ms, e2e_ms, pure_ips, e2e_ips = _speeds(result)
    lines += [
        f"平均推論時間: {pure_ms:.2f} ms/image (純粋推論のみ)",
        f"スループット: {pure_ips:.1f} images/sec (純粋推論ベース)",
        f"平均全処理時間: {e2e_ms:.2f} ms/image (End-to-End)",
        f"スループット: {e2e_ips:.1f} images/sec (実効性能ベース)",
        f"計測サンプル数: {result.measured} (ウォームアップ除外: {result.warmup_samples})",
    ]
    if "providers" in info:  # ONNX Runtime's, as the original printed the list
        lines.append(f"プロバイダー: {[p.strip() for p in info['providers'].split(',')]}")
    if result.runtime != "pytorch" and info.get("pipeline"):  # its name, before the details
        lines.append(f"パイプライン: {info['pipeline'].split(' (')[0]}")
    return lines


def _speeds(result: InferenceResult) -> tuple[float, float, float, float]:
    """(pure, end-to-end) ms per image, then (pure, end-to-end) images per second."""
    pure, e2e = result.pure_seconds, result.e2e_seconds
    return (result.per_image_ms(pure), result.per_image_ms(e2e),
            result.images_per_second(pure), result.images_per_second(e2e))


def summary_text(result: InferenceResult, info: dict[str, str]) -> str:
    """The original's lines first (``original_summary_lines``), then ours: Japanese label
    first, English after (users read both)."""
    acc = result.accuracy
    lines = [
        *original_summary_lines(result, info),
        f"=== 推論サマリー / Inference summary ({result.runtime}) ===",
        f"モデル / Model: {info.get('model', '')}",
        f"データ / Data: {info.get('data', '')}",
        f"入力サイズ / Input size: {info.get('input_size', '')}",
        f"バッチサイズ / Batch size: {result.batch_size}",
        f"画像数 / Images: {result.measured}",
    ]
    if acc is not None:
        correct = int(np.sum(np.asarray(result.preds) == np.asarray(result.labels)))
        lines.append(f"精度 / Accuracy: {100 * acc:.2f}% ({correct}/{result.measured})")
        if result.top_k_accuracy is not None:
            lines.append(f"上位 {result.top_k} 精度 / Top-{result.top_k} accuracy: "
                         f"{100 * result.top_k_accuracy:.2f}%")
    else:
        lines.append("精度 / Accuracy: n/a (unlabelled data)")
    pure_ms, e2e_ms, pure_ips, e2e_ips = _speeds(result)
    lines += [
        f"平均推論時間 (純粋) / Pure inference: {pure_ms:.3f} ms/image",
        f"スループット (純粋) / Pure throughput: {pure_ips:.1f} images/s",
        f"平均処理時間 (End-to-End) / End-to-end: {e2e_ms:.3f} ms/image",
        f"スループット (End-to-End) / End-to-end throughput: {e2e_ips:.1f} images/s",
        f"計測サンプル数 / Measured samples: {result.measured}",
        f"ウォームアップサンプル数 / Warm-up samples: {result.warmup_samples}",
        f"スキップした画像 / Skipped images: {len(result.skipped)}",
    ]
    for key, value in info.items():
        if key not in ("model", "data", "input_size"):
            lines.append(f"{key}: {value}")
    for path in result.skipped:
        lines.append(f"  skipped (corrupt or not an image): {path}")
    return "\n".join(lines) + "\n"


def plot_confusion(cm: np.ndarray, class_names: list[str], path: Path, title: str,
                   style: dict[str, Any] | None = None) -> None:
    """The confusion-matrix PNG. ``style``: the config's ``confusion_matrix_config`` (title,
    xlabel, ylabel, fontsize, title_fontsize, label_fontsize, figsize, cmap), as in the
    original; Japanese labels render (``plotting.use_cjk_font``)."""
    from pochitrain.plotting import figure, tight_layout

    st = dict(style or {})
    n = len(class_names)
    size = max(4.0, 0.5 * n + 2)
    fig = figure(figsize=st.get("figsize") or (size, size * 0.9))
    ax = fig.subplots()
    im = ax.imshow(cm, cmap=st.get("cmap", "Blues"))
    fig.colorbar(im, ax=ax, fraction=0.046)
    label_size = st.get("label_fontsize")
    ax.set_xticks(range(n), class_names, rotation=45 if n > 12 else 0,
                  ha="right" if n > 12 else "center")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel(st.get("xlabel", "predicted"), fontsize=label_size)
    ax.set_ylabel(st.get("ylabel", "true"), fontsize=label_size)
    ax.set_title(f"{st['title']}\n{title}" if "title" in st else title,
                 fontsize=st.get("title_fontsize"))
    if n <= 30:
        thresh = cm.max() / 2 if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                        fontsize=st.get("fontsize", 8),
                        color="white" if cm[i, j] > thresh else "black")
    tight_layout(fig)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def write_model_info(out_dir: Path, model_path: Path, model_name: str, num_classes: int,
                     device: str) -> Path:
    """model_info.json beside PyTorch results (the original's keys): model_name, num_classes,
    device, model_path, best_accuracy (percent) and epoch of the checkpoint (null if absent)."""
    import json

    import torch

    try:
        payload = torch.load(model_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - the model loaded already; the extras are optional
        payload = None
    payload = payload if isinstance(payload, dict) else {}
    best = payload.get("best_accuracy")
    if best is None and isinstance(payload.get("val_accuracy"), (int, float)):
        best = 100.0 * float(payload["val_accuracy"])  # ours: a fraction
    info = {"model_name": model_name, "num_classes": num_classes, "device": device,
            "model_path": str(model_path),
            "best_accuracy": float(best) if isinstance(best, (int, float)) else None,
            "epoch": payload.get("epoch") if isinstance(payload.get("epoch"), int) else None}
    path = out_dir / "model_info.json"
    atomic_write_text(path, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return path


REPORT_CSV = "classification_report.csv"
CONFUSION_PNG = "confusion_matrix.png"


def write_labelled_reports(result: InferenceResult, out_dir: Path, title: str,
                           style: dict[str, Any] | None) -> None:
    """The files only labelled data has: the classification report and the confusion matrix
    (scikit-learn for both, matplotlib for the picture)."""
    atomic_write_text(out_dir / REPORT_CSV, classification_report_csv(result))
    plot_confusion(confusion(result), result.class_names, out_dir / CONFUSION_PNG, title, style)


def write_reports(result: InferenceResult, out_dir: Path, info: dict[str, str],
                  cm_style: dict[str, Any] | None = None, plotter: Any = None) -> list[Path]:
    """Write every result file into ``out_dir``; return their paths. ``plotter``: a started
    ``plot_helper.PlotHelper`` that writes the labelled reports meanwhile (else, or when it
    fails, they are written here)."""
    prefix = result.runtime
    job = None
    if result.labelled and result.measured:
        acc = result.accuracy or 0.0
        job = (result, out_dir, f"{prefix}: accuracy {100 * acc:.2f}%", cm_style)
        if plotter is not None:  # it draws while the results are written here
            plotter.submit("write_labelled_reports", result.labels_only(), *job[1:])
    written = [out_dir / f"{prefix}_inference_results.csv",
               out_dir / f"{prefix}_inference_summary.txt"]
    atomic_write_text(written[0], results_csv(result))
    atomic_write_text(written[1], summary_text(result, info))
    if job is not None:
        if plotter is None or not plotter.wait():
            write_labelled_reports(*job)
        written += [out_dir / REPORT_CSV, out_dir / CONFUSION_PNG]
    return written

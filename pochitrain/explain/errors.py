"""`pochi infer --explain-errors`: a gallery of the misclassified images with their heatmaps.

``prepare`` runs before the inference (a missing grad-cam extra or a missing checkpoint fails
before any work); ``ErrorsGallery.write`` runs after it, on the inference's results, and
draws ``explain_errors.png`` (pages of ``explain_draw.SHEET_ROWS`` images when there are
more): per image the input as the model saw it, the true and predicted class, and the
overlays of its top-3 classes. The most confident mistakes come first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pochitrain.explain.cam import require_grad_cam
from pochitrain.explain.explainer import CAM_BATCH, Explainer, load_images
from pochitrain.explain.source import file_meta, open_source, run_checkpoint
from pochitrain.explain_draw import SHEET_ROWS, ExplainedImage, draw_sheet, sheet_pages
from pochitrain.model import backend_for

if TYPE_CHECKING:
    from pochitrain.reports import InferenceResult

GALLERY_STEM = "explain_errors"
MAX_ERRORS = 4 * SHEET_ROWS  # the most confident mistakes; the CSV lists every one


@dataclass
class ErrorsGallery:
    model_path: Path
    config: Path | str | None
    device: str

    def write(self, result: InferenceResult, out_dir: Path, progress: bool = True) -> list[Path]:
        """The gallery pages in ``out_dir``; none when nothing was misclassified."""
        from pochitrain.console import info, progress_bar, warn

        wrong = [i for i, (label, pred) in enumerate(zip(result.labels, result.preds))
                 if label >= 0 and label != pred]
        if not result.labelled or not wrong:
            info("--explain-errors: " + ("no labels in the data, so no errors to explain"
                                         if not result.labelled else "no misclassified images"))
            return []
        wrong.sort(key=lambda i: -result.confidences[i])
        if len(wrong) > MAX_ERRORS:
            warn(f"--explain-errors: {len(wrong)} misclassified images; the gallery shows the "
                 f"{MAX_ERRORS} most confident mistakes.")
            wrong = wrong[:MAX_ERRORS]
        explainer = Explainer(open_source(self.model_path, self.config, self.device))
        info(f"--explain-errors: {explainer.describe()}")
        items: list[ExplainedImage] = []
        try:
            with progress_bar(progress, "Grad-CAM (errors)", len(wrong)) as advance:
                for start in range(0, len(wrong), CAM_BATCH):
                    part = wrong[start:start + CAM_BATCH]
                    loaded = load_images([result.paths[i] for i in part], explainer.source)
                    done = explainer.explain(loaded, [p.name for p in loaded.paths])
                    items += _captioned(done, [i for i in part
                                               if result.paths[i] in loaded.paths], result)
                    advance(len(part))
        finally:
            explainer.close()
        names = sheet_pages(GALLERY_STEM, len(items))
        title = f"misclassified images ({result.runtime}); {explainer.describe()}"
        return [draw_sheet(items[n * SHEET_ROWS:(n + 1) * SHEET_ROWS], out_dir / name, title)
                for n, name in enumerate(names) if items[n * SHEET_ROWS:]]


def _captioned(items: list[ExplainedImage], indices: list[int],
               result: InferenceResult) -> list[ExplainedImage]:
    names = result.class_names
    for item, i in zip(items, indices):
        item.caption = (f"true {names[result.labels[i]]} -> {names[result.preds[i]]} "
                        f"({100 * result.confidences[i]:.1f}%)")
    return items


def prepare(model_path: Path | str, config: Path | str | None = None,
            device: str = "auto") -> ErrorsGallery:
    """Checks what the gallery needs before the inference runs: the grad-cam extra and, for an
    .onnx or engine, the checkpoint of the same run."""
    require_grad_cam()
    model_path = Path(model_path)
    if backend_for(model_path).runtime != "pytorch" and model_path.is_file():
        run_checkpoint(model_path, file_meta(model_path))
    return ErrorsGallery(model_path, config, device)

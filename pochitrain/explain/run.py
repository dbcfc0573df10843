"""`pochi explain MODEL IMAGE|DIR...`: Grad-CAM heatmaps for images, as PNGs and explain.csv;
and the gallery of ``pochi infer --explain-errors``.

The pictures are drawn here, page by page as heatmaps are computed, so memory stays bounded
however many images there are; matplotlib is imported by a thread meanwhile
(``plotting.preload``). The plot helper process takes one job at the end, which would hold
every heatmap of the run in memory at once.

The errors gallery: ``prepare`` runs before the inference (a missing grad-cam extra or a
missing checkpoint fails before any work); ``ErrorsGallery.write`` runs after it, on the
inference's results, and draws ``explain_errors.png`` (pages of ``SHEET_ROWS`` images): per
image the input as the model saw it, the true and predicted class, and the overlays of its
top-3 classes. The most confident mistakes come first.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pochitrain.data import IMAGE_EXTENSIONS
from pochitrain.errors import DataError, PochiError
from pochitrain.explain.explainer import (
    Explainer,
    open_source,
    require_grad_cam,
    run_checkpoint,
    target_index,
)
from pochitrain.explain_draw import (
    SHEET_ROWS,
    ExplainedImage,
    draw_overlay,
    draw_sheet,
    sheet_pages,
)
from pochitrain.model import backend_for
from pochitrain.workspace import (
    atomic_write_text,
    check_output_dir,
    claimed_output_dir,
    new_run_dir,
    run_folder_of,
)

if TYPE_CHECKING:
    from pochitrain.reports import InferenceResult

RESULTS_CSV = "explain.csv"
SHEET_STEM = "contact_sheet"
GALLERY_STEM = "explain_errors"
MAX_ERRORS = 4 * SHEET_ROWS  # the most confident mistakes; the CSV lists every one
CSV_HEADER = ["image_path", "true_class", "predicted_class", "probability", "target_class",
              "target_probability", "top3", "heatmap_png"]


@dataclass
class ExplainOutcome:
    out_dir: Path
    files: list[Path]
    note: str  # which layer and weights the heatmaps come from
    explained: list[ExplainedImage] = field(default_factory=list)  # kept: keep_images=True
    skipped: list[Path] = field(default_factory=list)


@dataclass
class Pending:
    """Images listed for explaining, with the names their files get."""

    paths: list[Path]
    names: list[str]  # shown in titles: the path relative to the folder given
    stems: list[str]  # unique file-name stems
    folders: list[str | None]  # the class folder an image of a folder given lies in


def list_images(inputs: list[Path | str]) -> Pending:
    """Files as given, folders searched recursively (sorted); DataError for a missing path."""
    found: list[tuple[Path, str]] = []
    folders: list[str | None] = []
    for item in map(Path, inputs):
        if item.is_file():
            found.append((item, item.name))
            folders.append(None)
        elif item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file()
                           and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not p.name.startswith("."))
            if not files:
                raise DataError("フォルダに画像がありません\n"
                                f"No images in {item}.",
                                f"Image files end in {', '.join(IMAGE_EXTENSIONS)}.")
            found += [(p, p.relative_to(item).as_posix()) for p in files]
            folders += [p.parent.name if p.parent != item else None for p in files]
        else:
            raise DataError("画像またはフォルダが見つかりません\n"
                            f"Image or folder not found: {item}", "Check the path.")
    stems: list[str] = []
    taken: set[str] = set()
    for _, name in found:
        stem = base = name.rsplit(".", 1)[0].replace("/", "_")
        n = 1
        while stem in taken:
            n += 1
            stem = f"{base}_{n}"
        taken.add(stem)
        stems.append(stem)
    return Pending([p for p, _ in found], [n for _, n in found], stems, folders)


def refuse_earlier_results(out: Path) -> None:
    if (out / RESULTS_CSV).exists():
        raise PochiError("出力フォルダにはすでに Grad-CAM の結果があります\n"
                         f"{out} already holds heatmaps ({RESULTS_CSV}).",
                         "Choose a new --output folder (results are never overwritten).")


def explain(model: Path | str, inputs: list[Path | str], output: Path | str | None = None,
            target_class: str = "top", layer: str | None = None, device: str = "auto",
            config: Path | str | None = None, progress: bool = True,
            keep_images: bool = False) -> ExplainOutcome:
    """Heatmap PNGs, contact sheets and ``explain.csv`` for ``inputs`` (files or folders).

    ``target_class``: ``top`` (each image's predicted class) or a class name; ``layer``: a
    module name of the network (default: see ``explain.explainer``); ``keep_images``: also return
    every ``ExplainedImage`` (heatmaps included) in the outcome.
    """
    from pochitrain.console import info
    from pochitrain.plotting import preload

    require_grad_cam()  # before any work
    model = Path(model)
    out_dir = check_output_dir(output, refuse_earlier_results, "heatmap files")
    pending = list_images(inputs)
    preload()  # matplotlib's import on a thread while the model loads
    source = open_source(model, config, device)
    target = target_index(target_class, source.class_names)
    explainer = Explainer(source, layer)
    info(explainer.describe())
    try:
        created = out_dir is None
        if out_dir is None:
            out_dir = new_run_dir(run_folder_of(model) / "explain_results")
        with claimed_output_dir(out_dir, refuse_earlier_results, new=created):
            outcome = write_all(explainer, pending, out_dir, target, progress, keep_images)
    finally:
        explainer.close()
    if outcome.skipped:
        info(f"skipped {len(outcome.skipped)} unreadable file(s): "
             + ", ".join(str(p) for p in outcome.skipped[:5]))
    return outcome


def write_all(explainer: Explainer, pending: Pending, out_dir: Path, target: int | None,
              progress: bool, keep_images: bool) -> ExplainOutcome:
    from pochitrain.console import progress_bar

    footer = explainer.describe()
    pages = iter(sheet_pages(SHEET_STEM, len(pending.paths)))
    outcome = ExplainOutcome(out_dir, [], footer)
    sheet: list[ExplainedImage] = []
    rows: list[list[str]] = []
    known = set(explainer.source.class_names)  # a class folder is the true class when known
    with progress_bar(progress, "Grad-CAM", len(pending.paths)) as advance:
        for kept, items, skipped in explainer.explain_files(pending.paths, pending.names,
                                                            target, advance):
            outcome.skipped += skipped
            for i, item in zip(kept, items):
                folder = pending.folders[i]
                item.true_class = folder if folder in known else None
                png = draw_overlay(item, out_dir / f"{pending.stems[i]}_gradcam.png", footer)
                outcome.files.append(png)
                rows.append(csv_row(pending.paths[i], item, png.name))
            sheet += items
            if keep_images:
                outcome.explained += items
            while len(sheet) >= SHEET_ROWS:
                outcome.files.append(draw_sheet(sheet[:SHEET_ROWS], out_dir / next(pages),
                                                f"top-{len(sheet[0].top)} classes; {footer}"))
                sheet = sheet[SHEET_ROWS:]
    if not rows:  # raised inside the claim: the empty results folder is removed
        raise DataError("画像として読み込めるファイルがありません\n"
                        f"None of the {len(pending.paths)} files could be read as images.",
                        "Check the image paths.")
    if sheet:
        outcome.files.append(draw_sheet(sheet, out_dir / next(pages),
                                        f"top-{len(sheet[0].top)} classes; {footer}"))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([CSV_HEADER, *rows])
    atomic_write_text(out_dir / RESULTS_CSV, buffer.getvalue())
    outcome.files.append(out_dir / RESULTS_CSV)
    return outcome


def csv_row(path: Path, item: ExplainedImage, png: str) -> list[str]:
    top = "|".join(f"{p.class_name}:{p.probability:.4f}" for p in item.top)
    return [str(path), item.true_class or "", item.predicted, f"{item.probability:.6f}",
            item.target.class_name, f"{item.target.probability:.6f}", top, png]


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
        paths = [result.paths[i] for i in wrong]
        classes = result.class_names
        try:
            with progress_bar(progress, "Grad-CAM (errors)", len(wrong)) as advance:
                for kept, done, _ in explainer.explain_files(paths, [p.name for p in paths],
                                                             None, advance):
                    for k, item in zip(kept, done):
                        i = wrong[k]
                        item.caption = (f"true {classes[result.labels[i]]} -> "
                                        f"{classes[result.preds[i]]} "
                                        f"({100 * result.confidences[i]:.1f}%)")
                    items += done
        finally:
            explainer.close()
        names = sheet_pages(GALLERY_STEM, len(items))
        title = f"misclassified images ({result.runtime}); {explainer.describe()}"
        return [draw_sheet(items[n * SHEET_ROWS:(n + 1) * SHEET_ROWS], out_dir / name, title)
                for n, name in enumerate(names) if items[n * SHEET_ROWS:]]


def prepare(model_path: Path | str, config: Path | str | None = None,
            device: str = "auto") -> ErrorsGallery:
    """Checks what the gallery needs before the inference runs: the grad-cam extra and, for an
    .onnx or engine, the checkpoint of the same run."""
    require_grad_cam()
    model_path = Path(model_path)
    read_meta = backend_for(model_path).read_meta
    if read_meta is not None and model_path.is_file():  # an export: its checkpoint is needed
        run_checkpoint(model_path, read_meta(model_path))
    return ErrorsGallery(model_path, config, device)

"""The pictures of ``pochi explain`` and ``pochi infer --explain-errors`` (matplotlib only).

Inputs are plain arrays: the image as the model saw it (after resize / crop) and Grad-CAM
overlays already blended on it, both (H, W, 3) uint8 RGB. Every PNG has a fixed size in
pixels (figure inches x ``DPI``, no tight bounding box), so pages line up and tests can check
them. Japanese class names render (``plotting.figure`` sets up the CJK font).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pochitrain.workspace import atomic_file

DPI = 100
OVERLAY_INCHES = (6.4, 3.8)  # per-image PNG: the input and its heatmap overlay
PANEL_INCHES = (2.2, 2.5)  # one cell of a contact sheet (width, height)
SHEET_ROWS = 16  # images per contact-sheet page


@dataclass
class Panel:
    """One heatmap overlay and what it is for."""

    class_name: str
    probability: float
    overlay: np.ndarray  # (H, W, 3) uint8
    heatmap: np.ndarray | None = None  # (H, W) float32 in [0, 1], the raw Grad-CAM map


@dataclass
class ExplainedImage:
    """One image and its Grad-CAM overlays: ``target`` for the per-image PNG, ``top`` for the
    contact sheet (the top classes, most probable first)."""

    name: str  # shown in titles
    image: np.ndarray  # (H, W, 3) uint8, as the model saw it
    predicted: str
    probability: float
    target: Panel
    top: list[Panel] = field(default_factory=list)
    caption: str = ""  # a sheet row's first line (the errors gallery: true -> predicted)
    true_class: str | None = None  # the class folder the image came from, when known

    def __post_init__(self) -> None:
        # a file name that is not UTF-8 (surrogates) cannot be drawn: show it escaped
        self.name = self.name.encode("utf-8", "backslashreplace").decode("utf-8")

    def verdict(self) -> str:
        """"predicted X (p)", with the true class when known."""
        said = f"predicted {self.predicted} ({_percent(self.probability)})"
        if self.true_class is None:
            return said
        return f"{said}, true {self.true_class}" + (
            "" if self.true_class == self.predicted else " (wrong)")


def overlay_size() -> tuple[int, int]:
    """(width, height) in pixels of a per-image PNG."""
    return round(OVERLAY_INCHES[0] * DPI), round(OVERLAY_INCHES[1] * DPI)


def sheet_size(rows: int, columns: int) -> tuple[int, int]:
    """(width, height) in pixels of a contact-sheet page."""
    return round(PANEL_INCHES[0] * columns * DPI), round(PANEL_INCHES[1] * rows * DPI)


def _percent(p: float) -> str:
    return f"{100 * p:.1f}%"


def _flat(panel: Panel) -> str:
    """A note for an all-zero map: the layer shows no positive evidence for that class
    (Grad-CAM keeps only positive evidence), so the overlay is uniformly cold."""
    heatmap = panel.heatmap
    return " (flat)" if heatmap is not None and float(heatmap.max()) <= 1e-6 else ""


def _save(fig: Any, path: Path) -> Path:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _show(ax: Any, pixels: np.ndarray, title: str, fontsize: float) -> None:
    ax.imshow(pixels, interpolation="nearest")
    ax.set_title(title, fontsize=fontsize)
    ax.set_axis_off()


def draw_overlay(item: ExplainedImage, path: Path, footer: str) -> Path:
    """The per-image PNG: the input as the model saw it beside its heatmap overlay; the
    prediction and its probability in the title, ``footer`` (layer, weights) below."""
    from pochitrain.plotting import figure

    fig = figure(figsize=OVERLAY_INCHES)
    left, right = fig.subplots(1, 2)
    h, w = item.image.shape[:2]
    _show(left, item.image, f"input ({h}x{w}, as the model saw it)", 9)
    target = item.target
    _show(right, target.overlay,
          f"Grad-CAM: {target.class_name} ({_percent(target.probability)}){_flat(target)}", 9)
    fig.suptitle(f"{item.name}\n{item.verdict()}", fontsize=11)
    fig.text(0.5, 0.015, "\n".join(textwrap.wrap(footer, 105)), ha="center", va="bottom",
             fontsize=7, color="0.35")
    fig.subplots_adjust(left=0.03, right=0.97, top=0.78, bottom=0.1, wspace=0.08)
    return _save(fig, path)


def draw_sheet(items: list[ExplainedImage], path: Path, title: str) -> Path:
    """A contact-sheet page: one row per image (the input, then an overlay per top class)."""
    from pochitrain.plotting import figure

    columns = 1 + max(len(item.top) for item in items)
    width, height = PANEL_INCHES[0] * columns, PANEL_INCHES[1] * len(items)
    fig = figure(figsize=(width, height))
    axes = np.asarray(fig.subplots(len(items), columns, squeeze=False))
    for row, item in zip(axes, items):
        first = item.caption or item.verdict()
        _show(row[0], item.image, f"{_short(item.name)}\n{first}", 7)
        for rank, (ax, panel) in enumerate(zip(row[1:], item.top), start=1):
            _show(ax, panel.overlay, f"top-{rank}: {panel.class_name}\n"
                  f"{_percent(panel.probability)}{_flat(panel)}", 7)
        for ax in row[1 + len(item.top):]:
            ax.set_axis_off()
    lines = textwrap.wrap(title, int(width * 13))  # about 13 characters an inch at 9 pt
    fig.suptitle("\n".join(lines), fontsize=9, y=1 - 0.1 / height, va="top")
    # room for the page title and the first row's panel titles, in inches whatever the height
    top = 1 - (0.7 + 0.16 * len(lines)) / height
    fig.subplots_adjust(left=0.02, right=0.98, top=top, bottom=0.01, hspace=0.45,
                        wspace=0.06)
    return _save(fig, path)


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else "..." + name[-(limit - 3):]


def sheet_pages(stem: str, count: int) -> list[str]:
    """File names of the pages for ``count`` images: ``stem.png`` when one page is enough,
    else ``stem_1.png``, ``stem_2.png``, ..."""
    pages = max(1, -(-count // SHEET_ROWS))
    if pages == 1:
        return [f"{stem}.png"]
    return [f"{stem}_{n}.png" for n in range(1, pages + 1)]

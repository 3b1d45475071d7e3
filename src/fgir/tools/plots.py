"""Figures written straight to files with matplotlib's Agg canvas (no pyplot: no global figure
state, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from fgir.fileio import atomic_path

# Above this many classes cell counts are no longer readable, so only colours are drawn.
MAX_ANNOTATED_CLASSES = 20


def save_figure(figure: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Render `figure` to `path` (format from its suffix) atomically."""
    path = Path(path)
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    return path


def confusion_heatmap(
    confusion: torch.Tensor | np.ndarray, class_names: list[str], path: str | os.PathLike, title: str = ""
) -> Path:
    """Heat map of a (true class, predicted class) count matrix, coloured by the fraction of each
    true class (so rare classes are as visible as common ones), class names on both axes."""
    counts = np.asarray(confusion, dtype=np.float64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not match {n} class names")
    support = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, support, out=np.zeros_like(counts), where=support > 0)

    side = min(4.0 + 0.14 * n, 32.0)
    font = max(3.0, min(9.0, 0.6 * side * 72 / max(n, 1)))  # about 60% of a cell's height, in points
    figure = Figure(figsize=(side + 1.5, side))
    axes = figure.add_subplot()
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")
    ticks = np.arange(n)
    axes.set_xticks(ticks, class_names, rotation=90, fontsize=font)
    axes.set_yticks(ticks, class_names, fontsize=font)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if title:
        axes.set_title(title)
    if n <= MAX_ANNOTATED_CLASSES:
        for (row, col), count in np.ndenumerate(counts):
            if count:
                colour = "white" if fractions[row, col] > 0.5 else "black"
                axes.text(col, row, f"{int(count)}", ha="center", va="center", fontsize=font, color=colour)
    return save_figure(figure, path)


def image_panels(
    panels: list[tuple[str, np.ndarray, np.ndarray | None, tuple[float, float, float, float] | None]],
    path: str | os.PathLike,
    title: str = "",
    columns: int = 3,
) -> Path:
    """A grid of images, each (caption, RGB image (H, W, 3) in [0, 1], optional heat map (H, W) in
    [0, 1] drawn over it, optional box x0, y0, x1, y1 (exclusive) outlined), without axes."""
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(3.0 * columns, 3.0 * rows + (0.4 if title else 0.0)))
    for index, (caption, image, heat, box) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(image, interpolation="nearest")
        if heat is not None:
            axes.imshow(heat, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0, interpolation="nearest")
        if box is not None:
            x0, y0, x1, y1 = box
            # Pixel i covers [i - 0.5, i + 0.5] in imshow coordinates.
            axes.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="lime", lw=2))
        axes.set_title(caption, fontsize=9)
        axes.set_axis_off()
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)

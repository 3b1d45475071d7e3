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

from fgir.engine.longtail import FrequencyBin
from fgir.engine.metrics import ReliabilityBins
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
    colorbar_label: str = "",
) -> Path:
    """A grid of images, each (caption, RGB image (H, W, 3) in [0, 1], optional heat map (H, W) in
    [0, 1] drawn over it, optional box x0, y0, x1, y1 (exclusive) outlined), without axes; one
    colour bar for the heat maps at the right."""
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(3.0 * columns + 0.8, 3.0 * rows + (0.4 if title else 0.0)))
    heat_image = None
    for index, (caption, image, heat, box) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(image, interpolation="nearest")
        if heat is not None:
            heat_image = axes.imshow(heat, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0, interpolation="nearest")
        if box is not None:
            x0, y0, x1, y1 = box
            # Pixel i covers [i - 0.5, i + 0.5] in imshow coordinates.
            axes.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="lime", lw=2))
        axes.set_title(caption, fontsize=9)
        axes.set_axis_off()
    if heat_image is not None:
        colorbar = figure.colorbar(heat_image, ax=figure.axes, fraction=0.03, pad=0.02, shrink=0.8)
        colorbar.solids.set_alpha(1.0)  # the scale itself, not the blend with the image
        colorbar.set_label(colorbar_label, fontsize=9)
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def reliability_diagram(panels: list[tuple[str, ReliabilityBins]], path: str | os.PathLike, title: str = "") -> Path:
    """One panel per (caption, bins): accuracy of each confidence bin as a bar against the diagonal
    of perfect calibration, the gap to it shaded, the ECE and the share of samples per bin."""
    figure = Figure(figsize=(4.2 * len(panels), 4.6))
    for index, (caption, bins) in enumerate(panels):
        n_bins = len(bins.counts)
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        filled = bins.counts.numpy() > 0
        accuracy = np.nan_to_num(bins.accuracy.numpy())
        confidence = np.nan_to_num(bins.confidence.numpy())
        axes = figure.add_subplot(1, len(panels), index + 1)
        axes.bar(centres[filled], accuracy[filled], width=1 / n_bins, color="tab:blue", edgecolor="black",
                 label="accuracy")
        axes.bar(centres[filled], (confidence - accuracy)[filled], bottom=accuracy[filled], width=1 / n_bins,
                 color="tab:red", alpha=0.3, edgecolor="tab:red", label="gap to confidence")
        axes.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        share = bins.counts.numpy() / max(int(bins.counts.sum()), 1)
        axes.step(edges, np.append(share, share[-1]), where="post", color="tab:gray", lw=1,
                  label="share of samples")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("confidence (probability of the predicted class)")
        axes.set_ylabel("accuracy")
        axes.set_title(f"{caption}\nECE {100 * bins.ece:.2f}% ({n_bins} bins)", fontsize=10)
        axes.legend(loc="upper left", fontsize=7)
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def accuracy_vs_frequency(
    train_counts: torch.Tensor,
    accuracy: torch.Tensor,
    bins: list[FrequencyBin],
    path: str | os.PathLike,
    thresholds: tuple[int, int] | None = None,
    title: str = "",
) -> Path:
    """Per-class accuracy (fraction, NaN: class absent from the split) against the class's number of
    training images on a log axis, one dot per class, a line through the binned means, and the
    head / tail thresholds (head_above, tail_below) as dashed lines. Classes without training images
    cannot sit on a log axis; their number is given in the legend."""
    counts = train_counts.double().numpy()
    values = accuracy.double().numpy()
    evaluated = ~np.isnan(values)
    shown = evaluated & (counts > 0)
    figure = Figure(figsize=(7.0, 4.5))
    axes = figure.add_subplot()
    axes.scatter(counts[shown], 100 * values[shown], s=8, alpha=0.4, color="tab:blue",
                 label=f"one class ({int(shown.sum())})")
    if bins:
        axes.plot([b.mean_count for b in bins], [100 * b.mean_accuracy for b in bins], "o-", color="tab:red",
                  label="mean of classes with 2^k..2^(k+1)-1 images")
    hidden = int((evaluated & (counts == 0)).sum())
    if hidden:
        axes.plot([], [], " ", label=f"{hidden} classes without training images not shown")
    if thresholds is not None:
        head_above, tail_below = thresholds
        axes.axvline(head_above + 0.5, color="gray", ls="--", lw=1, label=f"head: > {head_above} images")
        axes.axvline(tail_below - 0.5, color="gray", ls=":", lw=1, label=f"tail: < {tail_below} images")
    axes.set_xscale("log")
    axes.set_ylim(-2, 102)
    axes.set_xlabel("training images of the class (log scale)")
    axes.set_ylabel("class accuracy (%)")
    if title:
        axes.set_title(title)
    axes.legend(fontsize=7, loc="lower right")
    return save_figure(figure, path)

"""Explanation figures like the GLSim paper's: per image, the input, the GLS similarity map, the
selected box, the crop, and for comparison last-layer CLS attention and attention rollout.

    explain_images("runs/cub-glsim", ["photos/"], "explanations/")

A checkpoint of another method whose model has a ViT `backbone` (e.g. plain `vit`) gets the input
and the two attention maps only: it has no GLS map or box to show.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fgir.config import DataConfig
from fgir.data import DatasetFileError, build_dataset
from fgir.data.datasets import SPLITS
from fgir.data.synthetic import _read_manifest, manifest
from fgir.errors import FgirError
from fgir.methods.capabilities import Explains
from fgir.models.backbone import Backbone
from fgir.tools.attention import last_layer_map, model_attention, rollout_map
from fgir.tools.plots import image_panels
from fgir.tools.predictor import Predictor, expand_inputs, open_image

PathInput = str | os.PathLike
# The maps are scaled to [0, 1] within each image (see heat_map).
HEAT_SCALE = "patch score within the map (0: lowest, 1: highest)"
RIGHT, WRONG = "\u2713", "\u2717"  # after the true class in a figure's title


def explain_images(
    checkpoint_path: PathInput, images: PathInput | Iterable[PathInput], out_dir: PathInput, device: str = "auto",
    weights: PathInput | None = None,
) -> list[Path]:
    """Write `<stem>_explain.png` into `out_dir` for every image (folders stand for their image
    files); returns the written paths in input order. Two inputs with the same stem get
    `<stem>_<n>_explain.png` for the later ones instead of overwriting each other. `weights`: the
    backbone weights of an adapter-only checkpoint (see `restore_model`).

    The title gives the predicted class with the probability `fgir predict` shows (after the
    checkpoint's fitted temperature) and, for an image listed in one of the checkpoint's split
    files, its true class with a tick or a cross."""
    # The maps are computed outside the predictor's autocast: in float32 whatever its precision.
    predictor = Predictor.from_checkpoint(checkpoint_path, device=device, weights=weights)
    model, data = predictor.model, predictor.data
    backbone = _backbone_of(model)
    true_labels = listed_labels(data, len(predictor.class_names))
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (data.mean, data.std))
    written: list[Path] = []
    used: set[str] = set()
    for name, item in expand_inputs(images):
        batch = predictor.transform(open_image(item, data.max_image_pixels)).unsqueeze(0)
        shown = (batch[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        panels = explanation_panels(model, backbone, batch.to(predictor.device), shown)
        probabilities = predictor.probabilities(batch)[0]
        top = int(probabilities.argmax())
        title = f"predicted: {predictor.class_names[top]} ({100 * probabilities[top]:.1f}%)"
        truth = None if isinstance(item, Image.Image) else true_labels.get(os.path.abspath(item))
        if truth is not None:
            title += f"    true: {predictor.class_names[truth]} {RIGHT if truth == top else WRONG}"
        path = Path(out_dir) / f"{_unique_stem(Path(name).stem, used)}_explain.png"
        written.append(image_panels(panels, path, title=title, colorbar_label=HEAT_SCALE))
    return written


def listed_labels(data: DataConfig, num_classes: int) -> dict[str, int]:
    """The label of every image the dataset's split files list, by absolute path; empty where the
    dataset is not at hand or has another class count. A synthetic set is read only when the one
    the checkpoint was trained on is there: explaining never generates or replaces one."""
    if data.format == "synthetic" and _read_manifest(Path(data.root)) != manifest(data.synthetic):
        return {}
    labels: dict[str, int] = {}
    for split in SPLITS:
        try:
            dataset = build_dataset(data, split, transform=None)
        except (FgirError, DatasetFileError, OSError):
            continue  # split not configured or not readable here
        if dataset.num_classes != num_classes:
            return {}
        for path, label in zip(dataset.paths, dataset.labels, strict=True):
            labels.setdefault(path, label)
    return labels


def explanation_panels(model: nn.Module, backbone: Backbone, batch: torch.Tensor, shown: np.ndarray) -> list:
    """Panels for `image_panels` for one transformed image (1, C, H, W) displayed as `shown`."""
    size = batch.shape[-2:]
    panels = []
    panels.append(("input", shown, None, None))
    if isinstance(model, Explains):
        with torch.inference_mode():
            output = model.explain(batch)
        if output.scores is not None:
            panels.append((output.score_name, shown, heat_map(output.scores[0].reshape(backbone.grid_for(*size)), size), None))
        if output.boxes is not None:
            x0, y0, x1, y1 = (int(v) for v in output.boxes[0].tolist())
            top = f" (top {output.selected} patches)" if output.selected else ""
            panels += [(f"selected box{top}", shown, None, (x0, y0, x1, y1)), ("crop", shown[y0:y1, x0:x1], None, None)]
    blocks = model_attention(model, backbone, batch)
    panels += [
        ("last-layer attention", shown, heat_map(last_layer_map(blocks)[0], size), None),
        ("attention rollout", shown, heat_map(rollout_map(blocks)[0], size), None),
    ]
    return panels


def heat_map(grid_map: torch.Tensor, size: torch.Size) -> np.ndarray:
    """A patch-grid map upsampled to the image and scaled to [0, 1] (the colours show ranks of
    patches within the image, not absolute values, which differ in kind between the maps)."""
    upsampled = F.interpolate(grid_map[None, None].float().cpu(), size=tuple(size), mode="bilinear")[0, 0]
    low, high = upsampled.min(), upsampled.max()
    return ((upsampled - low) / (high - low).clamp(min=1e-12)).numpy()


def _backbone_of(model: nn.Module) -> Backbone:
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"cannot explain a {type(model).__name__}: it has no ViT backbone to read attention from")
    return backbone


def _unique_stem(stem: str, used: set[str]) -> str:
    candidate, count = stem, 1
    while candidate in used:
        count += 1
        candidate = f"{stem}_{count}"
    used.add(candidate)
    return candidate

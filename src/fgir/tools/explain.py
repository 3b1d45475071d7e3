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
from torch import nn

from fgir.engine.checkpoint import restore_model
from fgir.engine.device import resolve_device
from fgir.models.backbone import Backbone
from fgir.models.glsim import GLSim
from fgir.tools.attention import attention_rollout, last_layer_cls_attention
from fgir.tools.plots import image_panels
from fgir.tools.predictor import Predictor, expand_inputs, open_image

PathInput = str | os.PathLike


def explain_images(
    checkpoint_path: PathInput, images: PathInput | Iterable[PathInput], out_dir: PathInput, device: str = "auto"
) -> list[Path]:
    """Write `<stem>_explain.png` into `out_dir` for every image (folders stand for their image
    files); returns the written paths in input order. Two inputs with the same stem get
    `<stem>_<n>_explain.png` for the later ones instead of overwriting each other."""
    torch_device = resolve_device(device)
    model, checkpoint = restore_model(checkpoint_path, torch_device)
    data = checkpoint.config.data
    predictor = Predictor(model, checkpoint.class_names, data, torch_device)  # fp32: maps stay exact
    backbone = _backbone_of(model)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (data.mean, data.std))
    written: list[Path] = []
    used: set[str] = set()
    for name, item in expand_inputs(images):
        batch = predictor.transform(open_image(item, data.max_image_pixels)).unsqueeze(0)
        shown = (batch[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        panels = explanation_panels(model, backbone, batch.to(predictor.device), shown)
        probabilities = predictor.probabilities(batch)[0]
        top = int(probabilities.argmax())
        title = f"{predictor.class_names[top]} ({100 * probabilities[top]:.1f}%)"
        path = Path(out_dir) / f"{_unique_stem(Path(name).stem, used)}_explain.png"
        written.append(image_panels(panels, path, title=title))
    return written


def explanation_panels(model: nn.Module, backbone: Backbone, batch: torch.Tensor, shown: np.ndarray) -> list:
    """Panels for `image_panels` for one transformed image (1, C, H, W) displayed as `shown`."""
    size = batch.shape[-2:]
    panels = []
    if isinstance(model, GLSim):
        with torch.inference_mode():
            output = model.forward_details(batch)
        x0, y0, x1, y1 = (int(v) for v in output.boxes[0].tolist())
        gls = output.scores[0].reshape(backbone.grid_for(*size))
        panels += [
            ("input", shown, None, None),
            ("GLS similarity", shown, heat_map(gls, size), None),
            (f"selected box (top {model.config.top_o} patches)", shown, None, (x0, y0, x1, y1)),
            ("crop", shown[y0:y1, x0:x1], None, None),
        ]
    else:
        panels.append(("input", shown, None, None))
    panels += [
        ("last-layer attention", shown, heat_map(last_layer_cls_attention(backbone, batch)[0], size), None),
        ("attention rollout", shown, heat_map(attention_rollout(backbone, batch)[0], size), None),
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

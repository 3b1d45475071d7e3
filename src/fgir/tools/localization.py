"""How well GLSim's selected box finds the detail that decides the class, on a dataset whose
images come with the detail's box (the synthetic set records the planted badge).

Boxes are x0, y0, x1, y1 with x1, y1 exclusive, read as the continuous region [x0, x1) x [y0, y1).
The model sees the test transform's output: a square resize (`test_resize_size`; both sides, so x
and y scale differently for non-square images), then a centre crop of `image_size` (none when the
resize is already that size). Its boxes are mapped back through both steps before being compared.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fgir.config import DataConfig
from fgir.data import build_transform, read_image
from fgir.data.datasets import ImageListDataset
from fgir.data.transforms import test_resize_size


def crop_offset(resized: int, crop: int) -> int:
    """Pixels cut on the top (or left) by the centre crop, rounded as torchvision does."""
    return int(round((resized - crop) / 2.0))


def model_to_original(boxes: torch.Tensor, sizes: torch.Tensor, data: DataConfig) -> torch.Tensor:
    """(B, 4) boxes in model-input pixels -> original image pixels; `sizes` is (B, 2) width, height."""
    resized = test_resize_size(data)
    offset = crop_offset(resized, data.image_size)
    scale = (sizes.float() / resized).repeat(1, 2)  # x scale for x0 and x1, y scale for y0 and y1
    return (boxes.float() + offset) * scale


def original_to_model(points: torch.Tensor, sizes: torch.Tensor, data: DataConfig) -> torch.Tensor:
    """(B, 2) x, y points in original image pixels -> model-input pixels (the inverse mapping)."""
    resized = test_resize_size(data)
    return points.float() * resized / sizes.float() - crop_offset(resized, data.image_size)


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, :2] + boxes[:, 2:]) / 2


def contains(boxes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B,) whether each point lies in its box."""
    return ((points >= boxes[:, :2]) & (points < boxes[:, 2:])).all(1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) intersection over union of paired boxes."""
    overlap = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0).prod(1)
    return overlap / (_area(a) + _area(b) - overlap)


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(1)


def chance_hit(box_sizes: torch.Tensor, points: torch.Tensor, side: int) -> torch.Tensor:
    """(B,) probability that a box of each (width, height), placed uniformly at random inside the
    `side` x `side` model input, contains the point (model-input pixels). Per axis the box start s
    is uniform on [0, side - w] and covers p when p - w < s <= p."""
    room = side - box_sizes
    low = (points - box_sizes).clamp(min=0)
    high = torch.minimum(points, room)
    spread = (high - low).clamp(min=0) / room.clamp(min=1e-9)
    # A box as wide as the input never moves: it covers p exactly when p is inside the input.
    fixed = ((points >= 0) & (points < side)).float()
    return torch.where(room > 0, spread, fixed).prod(1)


def box_hit_rate(
    model: nn.Module, dataset: ImageListDataset, data: DataConfig, *, batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Localisation of a GLSim model (anything with `forward_details(images).boxes`) on a dataset
    with `boxes`. Images are read from `dataset.paths` and put through the test transform of `data`
    (the dataset's own transform is not used: it may be a training one).

    Returns hit_rate (the fraction of images whose box, in original pixels, contains the centre of
    the detail's box), mean_iou, and chance_hit_rate: the expected hit rate of a box of the same
    size placed uniformly at random inside the model input (exact, no sampling)."""
    if dataset.boxes is None:
        raise ValueError("box_hit_rate needs a dataset with boxes (e.g. data.format=synthetic)")
    if len(dataset) == 0:
        raise ValueError("box_hit_rate needs at least one image")
    transform = build_transform(data, train=False)
    model.eval()
    hits, ious, chances = [], [], []
    for start in range(0, len(dataset), batch_size):
        paths = dataset.paths[start:start + batch_size]
        images = [read_image(path) for path in paths]
        sizes = torch.tensor([image.size for image in images], dtype=torch.float32)
        batch = torch.stack([transform(image) for image in images]).to(device)
        with torch.inference_mode():
            predicted = model.forward_details(batch).boxes.float().cpu()
        truth = dataset.boxes[start:start + batch_size]
        centres = box_centres(truth)
        mapped = model_to_original(predicted, sizes, data)
        hits.append(contains(mapped, centres))
        ious.append(box_iou(mapped, truth))
        box_sizes = predicted[:, 2:] - predicted[:, :2]
        chances.append(chance_hit(box_sizes, original_to_model(centres, sizes, data), data.image_size))
    return {
        "num_images": len(dataset),
        "hit_rate": torch.cat(hits).float().mean().item(),
        "mean_iou": torch.cat(ious).mean().item(),
        "chance_hit_rate": torch.cat(chances).mean().item(),
    }

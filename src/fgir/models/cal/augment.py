"""Attention-guided crop and drop (WS-DAN, arXiv 1901.09891, Section 3.3; CAL, arXiv 2108.08728,
Section 3.3) with the reference code's arithmetic: maps are upsampled bilinearly with aligned corners
to the image, thresholds are fractions of each map's maximum (at its own resolution), the crop box is
the extent of the pixels at or above the threshold widened by `padding` times the image side (then
truncated to whole pixels and clipped), and the crop is resized back to the image size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fgir.models.gls import crop_and_resize as batched_crop_and_resize
from fgir.models.layers.bilinear_pooling import EPSILON


def pick_two_maps(attention: torch.Tensor) -> torch.Tensor:
    """(B, M, h, w) -> (B, 2, h, w): per image two maps drawn with replacement, map m with probability
    proportional to sqrt(sum of map m + 1e-6); the first guides the crop, the second the drop."""
    weights = torch.sqrt(attention.detach().float().sum(dim=(2, 3)) + EPSILON)
    index = torch.multinomial(weights / weights.sum(dim=1, keepdim=True), 2, replacement=True)
    return attention.gather(1, index[:, :, None, None].expand(-1, -1, *attention.shape[-2:]))


def thresholds(maps: torch.Tensor, fractions: torch.Tensor | float) -> torch.Tensor:
    """(B,) fraction of each single map's maximum (B, 1, h, w)."""
    return torch.as_tensor(fractions, dtype=torch.float32, device=maps.device) * maps.float().flatten(1).amax(1)


def upsampled(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=True)


def crop_boxes(maps: torch.Tensor, size: tuple[int, int], fractions: torch.Tensor | float,
               padding: float) -> torch.Tensor:
    """(B, 4) pixel boxes x0, y0, x1, y1 (x1, y1 exclusive) around the pixels of each upsampled map
    (B, 1, h, w) at or above its threshold. A map with no such pixel gives the whole image (the
    reference code would fail there)."""
    height, width = size
    mask = upsampled(maps, size)[:, 0] >= thresholds(maps, fractions)[:, None, None]

    def extent(present: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = present.float().argmax(dim=1).double()
        last = side - 1 - present.flip(1).float().argmax(dim=1).double()
        low = (first - padding * side).floor().clamp(min=0)
        return low.long(), (last + padding * side).floor().clamp(max=side).long()

    y0, y1 = extent(mask.any(dim=2), height)
    x0, x1 = extent(mask.any(dim=1), width)
    return torch.stack([x0, y0, x1, y1], dim=1)


def crop_and_resize(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each image's box, resized bilinearly (aligned corners) to the image size, for the whole batch
    at once (no per-image loop: exportable to ONNX, no host sync per image)."""
    return batched_crop_and_resize(images, boxes, align_corners=True)


def attention_crop(images: torch.Tensor, maps: torch.Tensor, fractions: torch.Tensor | float,
                   padding: float) -> torch.Tensor:
    return crop_and_resize(images, crop_boxes(maps, images.shape[-2:], fractions, padding))


def attention_drop(images: torch.Tensor, maps: torch.Tensor, fractions: torch.Tensor | float) -> torch.Tensor:
    """The images with the pixels where the upsampled map reaches its threshold set to 0."""
    keep = upsampled(maps, images.shape[-2:]) < thresholds(maps, fractions)[:, None, None, None]
    return images * keep.to(images.dtype)


def uniform(low: float, high: float, count: int) -> torch.Tensor:
    """`count` thresholds drawn uniformly in [low, high), one per image."""
    return low + (high - low) * torch.rand(count)

"""Checks shared by the tests of the comparison methods (MPN-COV, VQT, TransFG, FFVT)."""

import math

import torch

from fgir.engine.trainer import train
from fgir.models.backbone import Backbone


def vit_b16(image_size: int, **timm_kwargs) -> Backbone:
    """ViT-B/16 on the meta device: shapes only, no memory, no compute, no download."""
    with torch.device("meta"):
        return Backbone.create("vit_base_patch16_224", pretrained=False, img_size=image_size, **timm_kwargs)


def added_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts of the modules a method adds around its backbone, by top-level child."""
    counts = {}
    for name, parameter in model.named_parameters():
        child = name.split(".")[0]
        if child != "backbone":
            counts[child] = counts.get(child, 0) + parameter.numel()
    return counts


def trains_one_epoch(tiny_config, *overrides: str) -> None:
    """A short run through the trainer ends with finite validation and test metrics."""
    result = train(tiny_config("train.epochs=1", *overrides), progress=False)
    for metrics in (result.val_metrics, result.test_metrics):
        assert all(math.isfinite(value) for value in metrics.values() if isinstance(value, float)), metrics

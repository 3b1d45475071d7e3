"""Checks of a config against its backbone before any work: the backbone's shape, read from a
weightless (meta-device) build, then the method's own `check(config, facts)`."""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch

from fgir.errors import ConfigError
from fgir.methods import get_method


@dataclass(frozen=True)
class BackboneFacts:
    """What a method's check may need of its ViT backbone at `data.image_size`."""

    depth: int | None  # transformer blocks
    width: int | None  # embedding dimension
    patch_size: tuple[int, int] | None  # None: not a patch-based backbone
    grid: tuple[int, int] | None  # patch rows and columns at data.image_size

    @property
    def patches(self) -> int | None:
        return None if self.grid is None else self.grid[0] * self.grid[1]


def backbone_facts(config) -> BackboneFacts:
    model, size = config.model, config.data.image_size
    try:
        with torch.device("meta"):
            vit = timm.create_model(model.backbone, pretrained=False, img_size=size, **model.backbone_args)
    except Exception as err:  # timm raises many kinds for unknown names or bad arguments
        raise ConfigError(f"model.backbone='{model.backbone}' with model.backbone_args={model.backbone_args} "
                          f"cannot be built: {type(err).__name__}: {err}") from None
    blocks = getattr(vit, "blocks", None)
    depth = len(blocks) if blocks is not None else None
    width = getattr(vit, "embed_dim", None)
    patch = getattr(getattr(vit, "patch_embed", None), "patch_size", None)
    if patch is None:
        return BackboneFacts(depth, width, None, None)
    patch_h, patch_w = patch
    if size % patch_h or size % patch_w:
        raise ConfigError(f"data.image_size={size} is not divisible by the patch size {patch_h}x{patch_w} of "
                          f"model.backbone='{model.backbone}'; use a multiple of {patch_h}")
    return BackboneFacts(depth, width, (patch_h, patch_w), (size // patch_h, size // patch_w))


def check_before_work(config) -> None:
    """Refuse what the backbone cannot serve (image size vs patch size, a method's own limits)."""
    spec = get_method(config.model.method)
    if spec.own_network:
        return  # a network of its own (e.g. a CNN): no ViT backbone to describe
    facts = backbone_facts(config)
    if spec.check is not None:
        spec.check(config, facts)

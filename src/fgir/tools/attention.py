"""Attention maps of a ViT backbone over its patch grid: last-layer global-token attention and
attention rollout (Abnar & Zuidema, 2020), the baselines the GLSim paper compares its map with.

timm's blocks use fused SDPA, which returns no weights. For the duration of one call each block's
attention switches to timm's explicit path, where `attn_drop` receives the softmaxed attention; a
hook on `attn_drop` records it. The switch is undone afterwards, also on error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from fgir.models.backbone import Backbone


@contextlib.contextmanager
def recorded_attention(backbone: Backbone) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward pass through `backbone` appends each block's attention
    (B, heads, T, T) to the yielded list, in block order."""
    modules = [_attention_module(block, index) for index, block in enumerate(backbone.blocks)]
    flags = [module.fused_attn for module in modules]
    maps: list[torch.Tensor] = []
    handles = []
    try:
        for module in modules:
            module.fused_attn = False
            handles.append(module.attn_drop.register_forward_pre_hook(
                lambda _module, args: maps.append(args[0].detach().float())))
        yield maps
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in zip(modules, flags, strict=True):
            module.fused_attn = flag


def attention_matrices(backbone: Backbone, images: torch.Tensor) -> list[torch.Tensor]:
    """Each block's attention (B, heads, T, T) for `images`; run the backbone in eval mode so that
    neither dropout nor drop-path changes the tokens."""
    with torch.no_grad(), recorded_attention(backbone) as maps:
        backbone.forward_features(images)
    return maps


def last_layer_cls_attention(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    """(B, gh, gw): how much the global token attends to each patch in the last block, averaged
    over heads. Prefix tokens are left out, so a map sums to less than 1."""
    last = attention_matrices(backbone, images)[-1].mean(1)
    return _patch_map(backbone, _global_row(backbone, last), images)


def attention_rollout(backbone: Backbone, images: torch.Tensor, discard_ratio: float = 0.0) -> torch.Tensor:
    """(B, gh, gw): attention rollout. Per block: heads averaged, optionally the weakest
    `discard_ratio` of each sample's entries zeroed (noise suppression, as in common rollout code),
    identity added for the residual path, rows renormalised; blocks multiplied first to last."""
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    rollout = None
    for matrix in attention_matrices(backbone, images):
        attention = matrix.mean(1)
        if discard_ratio:
            attention = _discard_weakest(attention, discard_ratio)
        attention = attention + torch.eye(attention.shape[-1], device=attention.device)
        attention = attention / attention.sum(-1, keepdim=True)
        rollout = attention if rollout is None else attention @ rollout
    return _patch_map(backbone, _global_row(backbone, rollout), images)


def _attention_module(block: nn.Module, index: int) -> nn.Module:
    attention = getattr(block, "attn", None)
    if not (hasattr(attention, "fused_attn") and isinstance(getattr(attention, "attn_drop", None), nn.Module)):
        raise TypeError(
            f"block {index} ({type(block).__name__}) has no timm Attention with fused_attn and attn_drop; "
            "its attention weights cannot be recorded"
        )
    return attention


def _discard_weakest(attention: torch.Tensor, ratio: float) -> torch.Tensor:
    flat = attention.flatten(1)
    count = int(flat.shape[1] * ratio)
    if count == 0:
        return attention
    weakest = flat.topk(count, dim=1, largest=False).indices
    return flat.scatter(1, weakest, 0.0).view_as(attention)


def _global_row(backbone: Backbone, attention: torch.Tensor) -> torch.Tensor:
    """(B, T): the attention row of the global token GLSim uses: the CLS token, or for backbones
    without one the mean over the patch tokens' rows (the global token is their mean there)."""
    if backbone.has_cls_token:
        return attention[:, 0]
    return attention[:, backbone.num_prefix_tokens:].mean(1)


def _patch_map(backbone: Backbone, row: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    grid = backbone.grid_for(*images.shape[-2:])
    return row[:, backbone.num_prefix_tokens:].reshape(row.shape[0], *grid)

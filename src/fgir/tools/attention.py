"""Attention maps of a ViT backbone over its patch grid: last-layer global-token attention and
attention rollout (Abnar & Zuidema, 2020), the baselines the GLSim paper compares its map with, from
the weights `fgir.models.layers.attention_capture` records.
"""

from __future__ import annotations

import torch

from fgir.models.backbone import Backbone
from fgir.models.layers.attention_capture import attention_matrices


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

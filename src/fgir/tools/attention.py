"""Attention maps over the patch grid: last-layer global-token attention and attention rollout
(Abnar & Zuidema, arXiv 2005.00928), the baselines the GLSim paper (arXiv 2407.12891, Section 4.5)
compares its map with. They are read from the attention the model itself computes (a method's
prompts, queries and adapters included), through `HasAttentionMaps` where its tokens differ from
the plain backbone's."""

from __future__ import annotations

import torch
from torch import nn

from fgir.methods.capabilities import HasAttentionMaps
from fgir.models.backbone import Backbone
from fgir.models.layers.attention_capture import (
    BlockAttention,
    attention_matrices,
    own_attention,
    plain_layout,
)
from fgir.models.layers.attention_rollout import rollout_of_mixed


def model_attention(model: nn.Module, backbone: Backbone, images: torch.Tensor) -> list[BlockAttention]:
    """Each block's attention in `model`'s first pass over `images` (eval mode, no gradients)."""
    if isinstance(model, HasAttentionMaps):
        with torch.no_grad():
            return model.attention_maps(images)
    return own_attention(model, backbone, images, plain_layout(backbone, images))


def backbone_attention(backbone: Backbone, images: torch.Tensor) -> list[BlockAttention]:
    """Each block's attention of the bare backbone over `images`."""
    layout = plain_layout(backbone, images)
    return [BlockAttention(weights, *layout(index)) for index, weights in enumerate(attention_matrices(backbone, images))]


def last_layer_map(blocks: list[BlockAttention]) -> torch.Tensor:
    """(B, rows, columns): how much the global token attends to each patch in the last block that
    runs on the patch grid, averaged over heads. Other tokens are left out, so a map sums to less than 1."""
    last = blocks[-1]
    return last.patch_map(last.global_row(last.weights.mean(1)))


def rollout_map(blocks: list[BlockAttention], discard_ratio: float = 0.0) -> torch.Tensor:
    """(B, rows, columns): attention rollout from the input through the leading blocks that run on
    the input's tokens (all of them unless a block changes the token count, as a DS-ILA does). Per
    block: heads averaged, optionally the weakest `discard_ratio` of each sample's entries zeroed
    (noise suppression, as in common rollout code), then identity added and rows renormalised."""
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    first = blocks[0]
    leading = []
    for block in blocks:
        if block.weights.shape != first.weights.shape or block.grid != first.grid:
            break
        leading.append(block.weights.mean(1))
    if discard_ratio:
        leading = [_discard_weakest(mixed, discard_ratio) for mixed in leading]
    return first.patch_map(first.global_row(rollout_of_mixed(leading)))


def last_layer_cls_attention(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    """`last_layer_map` of the bare backbone."""
    return last_layer_map(backbone_attention(backbone, images))


def attention_rollout(backbone: Backbone, images: torch.Tensor, discard_ratio: float = 0.0) -> torch.Tensor:
    """`rollout_map` of the bare backbone."""
    return rollout_map(backbone_attention(backbone, images), discard_ratio)


def _discard_weakest(attention: torch.Tensor, ratio: float) -> torch.Tensor:
    flat = attention.flatten(1)
    count = int(flat.shape[1] * ratio)
    if count == 0:
        return attention
    weakest = flat.topk(count, dim=1, largest=False).indices
    return flat.scatter(1, weakest, 0.0).view_as(attention)

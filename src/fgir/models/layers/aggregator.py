"""GLSim's aggregator (arXiv:2407.12891, Sec. 3): one pre-norm ViT block over the global tokens of
the image and of its crop, then a LayerNorm."""

from __future__ import annotations

import torch
from timm.layers import LayerNorm
from timm.models.vision_transformer import Block, init_weights_vit_timm
from torch import nn


def aggregator_heads(dim: int) -> int:
    """Heads of 64 channels as in the backbone (12 for ViT-B); tiny widths fall back to a divisor."""
    heads = max(1, dim // 64)
    while dim % heads:
        heads -= 1
    return heads


class Aggregator(nn.Module):
    """One randomly initialised pre-norm ViT block plus a final LayerNorm over the fused tokens."""

    def __init__(self, dim: int, drop_path: float = 0.0):
        super().__init__()
        self.block = Block(dim, aggregator_heads(dim), mlp_ratio=4.0, qkv_bias=True, drop_path=drop_path)
        self.norm = LayerNorm(dim)
        self.block.apply(init_weights_vit_timm)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.block(tokens))

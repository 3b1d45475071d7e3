"""Bottleneck adapters beside a block's sub-layer (AdaptFormer, arXiv:2205.13535): down-projection,
GELU, up-projection started at zero, so an adapter adds nothing at the start of training."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def init_bottleneck(down: nn.Linear, up: nn.Linear) -> None:
    """Xavier down-projection, zero up-projection: the adapter adds nothing at the start."""
    nn.init.xavier_uniform_(down.weight)
    nn.init.zeros_(down.bias)
    nn.init.zeros_(up.weight)
    nn.init.zeros_(up.bias)


class ParallelAdapter(nn.Module):
    """Base of in-block adapters: `forward(x)` is what gets added to the sub-layer's output."""

    def add_to_output(self, sublayer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook on the sub-layer (a bound method, so deep copies rebind it to the copy)."""
        return output + self(args[0])


class BottleneckAdapter(ParallelAdapter):
    """x -> dropout(up(GELU(down(x)))) * scale; 2*D*d + d + D parameters (13,064 for D=768, d=8)."""

    def __init__(self, dim: int, bottleneck: int = 8, *, dropout: float = 0.1, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        self.dropout = nn.Dropout(dropout)
        init_bottleneck(self.down, self.up)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.up(self.act(self.down(tokens)))) * self.scale

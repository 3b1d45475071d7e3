"""ConvPass (Jie & Deng, 2022): a bottleneck adapter with a 3x3 convolution over the
patch grid."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fgir.models.layers.bottleneck_adapter import ParallelAdapter, init_bottleneck
from fgir.models.layers.grid import Grid


class QuickGELU(nn.Module):
    """ConvPass's activation (CLIP's GELU approximation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ConvPass(ParallelAdapter):
    """ConvPass (Jie & Deng, 2022): down-projection, QuickGELU, 3x3 convolution (padding 1) over the
    patch grid, QuickGELU, up-projection, dropout, times `scale`. Prefix tokens (CLS, registers) go
    through the convolution as 1x1 maps, i.e. through its centre tap only.
    13,648 parameters for D=768, d=8 (down 6,152, conv 584, up 6,912). The convolution starts as the
    identity (centre tap = identity matrix), the up-projection at zero.

    `grid` must be set to the patch grid of the current images before the forward pass
    (`ConvPassClassifier` does it)."""

    def __init__(
        self,
        dim: int,
        num_prefix_tokens: int,
        bottleneck: int = 8,
        *,
        dropout: float = 0.1,
        scale: float = 1.0,
    ):
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.scale = scale
        self.grid: Grid | None = None
        self.down = nn.Linear(dim, bottleneck)
        self.conv = nn.Conv2d(bottleneck, bottleneck, 3, padding=1)
        self.act = QuickGELU()
        self.up = nn.Linear(bottleneck, dim)
        self.dropout = nn.Dropout(dropout)
        init_bottleneck(self.down, self.up)
        with torch.no_grad():
            nn.init.zeros_(self.conv.weight)
            self.conv.weight[:, :, 1, 1] = torch.eye(bottleneck)
            nn.init.zeros_(self.conv.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.grid is None:
            raise RuntimeError("ConvPass.grid is not set: set it to the patch grid (rows, columns) first")
        height, width = self.grid
        prefix = self.num_prefix_tokens
        if tokens.shape[1] != prefix + height * width:
            raise ValueError(
                f"ConvPass got {tokens.shape[1]} tokens, expected {prefix + height * width} "
                f"({prefix} prefix + {height}x{width} patch grid)"
            )
        hidden = self.act(self.down(tokens))
        patches = hidden[:, prefix:].transpose(1, 2).reshape(tokens.shape[0], -1, height, width)
        patches = self.conv(patches).flatten(2).transpose(1, 2)
        prefix_hidden = F.linear(hidden[:, :prefix], self.conv.weight[:, :, 1, 1], self.conv.bias)
        hidden = self.act(torch.cat([prefix_hidden, patches], dim=1))
        return self.dropout(self.up(hidden)) * self.scale

"""The inter-layer adapter of ILA (arXiv:2409.11051, Sec. 3): a bottleneck with a depthwise
convolution over the patch grid between two blocks; the down-sampling variant shrinks the grid with
a valid 3x3 convolution on both branches."""

from __future__ import annotations

import torch
from torch import nn

from fgir.models.layers.bottleneck_adapter import init_bottleneck
from fgir.models.layers.grid import Grid

KERNEL = 3


class InterLayerAdapter(nn.Module):
    """One ILA on tokens (B, prefix + h*w, D) with the patch grid (h, w), row-major.

    Branch 1 (adapter): Linear D->d, BatchNorm, GELU; patches: depthwise 3x3 conv, BatchNorm2d, GELU,
    pointwise 1x1 conv; prefix tokens: their own d->d projection; then BatchNorm, GELU, Linear d->D,
    dropout. Branch 2 (residual): the input tokens; with `downsample`, the patch grid goes through a
    depthwise 3x3 valid convolution (no bias) initialised near one, a 3x3 sum pool at the start.
    Output: branch 2 + branch 1. The depthwise conv of branch 1 is valid (no padding) with
    `downsample` so both branches shrink alike, and padded otherwise.
    """

    def __init__(
        self,
        dim: int,
        num_prefix_tokens: int,
        *,
        downsample: bool,
        bottleneck: int = 8,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.downsample = downsample
        padding = 0 if downsample else KERNEL // 2
        self.act = nn.GELU()
        self.down = nn.Linear(dim, bottleneck)
        self.norm_down = nn.BatchNorm1d(bottleneck)
        self.conv_depthwise = nn.Conv2d(bottleneck, bottleneck, KERNEL, padding=padding, groups=bottleneck)
        self.norm_conv = nn.BatchNorm2d(bottleneck)
        self.conv_pointwise = nn.Conv2d(bottleneck, bottleneck, 1)
        self.prefix_proj = nn.Linear(bottleneck, bottleneck) if num_prefix_tokens else None
        self.norm_up = nn.BatchNorm1d(bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.dropout = nn.Dropout(dropout)
        self.residual_conv = nn.Conv2d(dim, dim, KERNEL, groups=dim, bias=False) if downsample else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        init_bottleneck(self.down, self.up)
        for layer in (self.conv_depthwise, self.conv_pointwise, self.prefix_proj):
            if layer is not None:
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        if self.residual_conv is not None:
            nn.init.normal_(self.residual_conv.weight, mean=1.0, std=0.001)

    def output_grid(self, grid: Grid) -> Grid:
        height, width = grid
        shrink = KERNEL - 1 if self.downsample else 0
        return height - shrink, width - shrink

    def forward(self, tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
        self._check(tokens, grid)
        prefix = self.num_prefix_tokens
        batch = tokens.shape[0]
        hidden = self.act(self.norm_down(self.down(tokens).transpose(1, 2)))  # (B, d, S)
        patches = hidden[:, :, prefix:].reshape(batch, -1, *grid)
        patches = self.conv_pointwise(self.act(self.norm_conv(self.conv_depthwise(patches)))).flatten(2)
        if self.prefix_proj is not None:
            prefix_hidden = self.prefix_proj(hidden[:, :, :prefix].transpose(1, 2)).transpose(1, 2)
            patches = torch.cat([prefix_hidden, patches], dim=2)
        update = self.dropout(self.up(self.act(self.norm_up(patches)).transpose(1, 2)))
        return self._residual(tokens, grid) + update

    def _residual(self, tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
        if self.residual_conv is None:
            return tokens
        prefix = self.num_prefix_tokens
        patches = tokens[:, prefix:].transpose(1, 2).reshape(tokens.shape[0], -1, *grid)
        patches = self.residual_conv(patches).flatten(2).transpose(1, 2)
        return torch.cat([tokens[:, :prefix], patches], dim=1)

    def _check(self, tokens: torch.Tensor, grid: Grid) -> None:
        height, width = grid
        expected = self.num_prefix_tokens + height * width
        if tokens.shape[1] != expected:
            raise ValueError(
                f"ILA got {tokens.shape[1]} tokens, expected {expected} "
                f"({self.num_prefix_tokens} prefix + {height}x{width} patch grid)"
            )
        if self.downsample and min(grid) < KERNEL:
            raise ValueError(
                f"a down-sampling ILA needs a patch grid of at least {KERNEL}x{KERNEL}, got {height}x{width}: "
                "use larger images or fewer DS-ILAs (model.peft.ila_ds_layers)"
            )

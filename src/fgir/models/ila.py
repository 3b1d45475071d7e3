"""ILA (Rios et al., arXiv 2409.11051, Section 3): inter-layer adapters on the residual stream of a frozen ViT, between blocks.

The down-sampling ILA (DS-ILA) shrinks the patch grid by 2 rows and 2 columns with valid 3x3
convolutions, so the blocks after it process fewer tokens; the same-resolution ILA keeps the grid.
Methods: `ila` (DS-ILAs only), `ila_plus` (same-resolution ILAs after the other blocks + DS-ILAs),
`ila_pp` (parallel bottleneck adapters beside attention and MLP in every block + DS-ILAs).

Decisions where the paper and its code leave room:
- Prefix tokens: the CLS token and any register tokens are treated alike: in the adapter branch each
  goes through the CLS projection (the reference's 1x1 convolution on a 1x1 map, i.e. a d->d linear
  map); in the residual branch they pass unchanged.
- The up-projection starts at zero, so at the start a same-resolution ILA is the identity and a DS-ILA
  is a 3x3 sum pool of the patch tokens (the reference re-initialises it randomly).
- Frozen backbone modules stay in evaluation mode; the ILA BatchNorms train and update their running
  statistics (`FrozenBackboneModel`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fgir.config import ConfigError, ModelConfig
from fgir.methods import register_method
from fgir.models.backbone import Backbone
from fgir.models.peft.adapters import (
    AdapterConfig,
    BottleneckAdapter,
    attach_parallel_adapters,
    init_bottleneck,
)
from fgir.models.peft.freezing import freeze_backbone
from fgir.models.peft.frozen_classifier import FrozenClassifier, Grid

KERNEL = 3


@dataclass
class ILAConfig(AdapterConfig):
    """ILA, ILA+ and ILA++ (arXiv 2409.11051, Section 3): where the inter-layer adapters go."""

    ila_ds_layers: list[int] = field(default_factory=lambda: [3, 7])  # DS-ILA after these blocks (0-based)
    # Same-resolution ILAs of ILA+ after these blocks; None: after every block without a DS-ILA
    # (10 for ViT-B/16 with [3, 7]: the paper's 174.6 K parameters).
    ila_layers: list[int] | None = None


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


def _check_indices(indices: list[int], key: str, depth: int, model_name: str) -> list[int]:
    wrong = [index for index in indices if not 0 <= index < depth]
    if wrong:
        raise ConfigError(f"model.peft.{key}: block indices {wrong} outside 0..{depth - 1} of {model_name}")
    repeated = sorted({index for index in indices if indices.count(index) > 1})
    if repeated:
        raise ConfigError(f"model.peft.{key}: block indices {repeated} given more than once")
    return sorted(indices)


def ila_placement(
    peft: ILAConfig, depth: int, model_name: str, *, same_resolution: bool
) -> tuple[list[int], list[int]]:
    """(blocks followed by a DS-ILA, blocks followed by a same-resolution ILA). By default the
    same-resolution ILAs go after every block that has no DS-ILA: with DS-ILAs after blocks 3 and 7
    of ViT-B/16, 10 of them, the 174.6 K trainable parameters of the spec's ILA+."""
    downsampling = _check_indices(list(peft.ila_ds_layers), "ila_ds_layers", depth, model_name)
    if not same_resolution:
        return downsampling, []
    if peft.ila_layers is None:
        return downsampling, [index for index in range(depth) if index not in downsampling]
    same = _check_indices(list(peft.ila_layers), "ila_layers", depth, model_name)
    both = sorted(set(same) & set(downsampling))
    if both:
        raise ConfigError(
            f"model.peft.ila_layers and model.peft.ila_ds_layers both place an ILA after blocks {both}; "
            "one ILA per block"
        )
    return downsampling, same


def _build(
    backbone: Backbone, num_classes: int, model: ModelConfig, *, same_resolution: bool, in_block: bool
) -> FrozenClassifier:
    peft = model.peft
    freeze_backbone(backbone, peft)
    downsampling, same = ila_placement(peft, backbone.num_blocks, backbone.model_name, same_resolution=same_resolution)

    def ila(downsample: bool) -> InterLayerAdapter:
        return InterLayerAdapter(
            backbone.embed_dim,
            backbone.num_prefix_tokens,
            downsample=downsample,
            bottleneck=peft.bottleneck,
            dropout=peft.dropout,
        )

    inter_layer = {index: ila(True) for index in downsampling} | {index: ila(False) for index in same}
    if in_block:
        attach_parallel_adapters(
            backbone, lambda: BottleneckAdapter(backbone.embed_dim, peft.bottleneck, dropout=peft.dropout)
        )
    return FrozenClassifier(
        backbone, num_classes, zero_init_head=model.zero_init_head, inter_layer=inter_layer
    )


def build_ila(backbone: Backbone, num_classes: int, model: ModelConfig) -> FrozenClassifier:
    """ILA: DS-ILAs after `model.peft.ila_ds_layers` only."""
    return _build(backbone, num_classes, model, same_resolution=False, in_block=False)


def build_ila_plus(backbone: Backbone, num_classes: int, model: ModelConfig) -> FrozenClassifier:
    """ILA+: DS-ILAs + same-resolution ILAs (`ila_placement`)."""
    return _build(backbone, num_classes, model, same_resolution=True, in_block=False)


def build_ila_pp(backbone: Backbone, num_classes: int, model: ModelConfig) -> FrozenClassifier:
    """ILA++: DS-ILAs + parallel bottleneck adapters beside attention and MLP in every block."""
    return _build(backbone, num_classes, model, same_resolution=False, in_block=True)


def _placement_check(same_resolution: bool):
    def check(config, facts) -> None:
        """The ILA block indices fit the backbone's depth, before any work."""
        if facts.depth is not None:
            ila_placement(config.model.peft, facts.depth, config.model.backbone, same_resolution=same_resolution)

    return check


register_method("ila", build=build_ila, config=ILAConfig, check=_placement_check(False))
register_method("ila_plus", build=build_ila_plus, config=ILAConfig, check=_placement_check(True))
register_method("ila_pp", build=build_ila_pp, config=ILAConfig, check=_placement_check(False))

"""WS-DAN's attention maps and bilinear attention pooling (Hu et al., arXiv 1901.09891, Section 3.2),
as CAL uses them (Rao et al., arXiv 2108.08728, Section 3.1): M maps from a 1x1 convolution over a
feature map, each map weighting the feature map into one C-vector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPSILON = 1e-6  # inside the signed square root, as the reference code


class AttentionMaps(nn.Module):
    """(B, C, H, W) features -> (B, M, H, W) non-negative maps: convolution 1x1 without bias, batch
    norm (eps 1e-3), ReLU."""

    def __init__(self, channels: int, maps: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, maps, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(maps, eps=1e-3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(features)))


def bilinear_attention_pooling(features: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) features and (B, M, H, W) maps -> (B, M * C), map-major: for each map m the mean
    over positions of map m times the features, then sign(x) sqrt(|x| + 1e-6) and L2 normalisation
    of the whole M * C vector."""
    height, width = features.shape[-2:]
    pooled = torch.einsum("bmhw,bchw->bmc", attention, features).flatten(1) / (height * width)
    return F.normalize(torch.sign(pooled) * torch.sqrt(pooled.abs() + EPSILON), dim=-1)

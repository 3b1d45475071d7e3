"""Classification heads placed on a backbone's pooled features."""

from __future__ import annotations

from torch import nn


class LinearHead(nn.Linear):
    """Linear classifier. Zero-initialised by default, as the GLSim/ViT fine-tuning recipes do, so
    training starts from uniform predictions; otherwise timm's ViT head init (truncated normal)."""

    def __init__(self, in_features: int, num_classes: int, zero_init: bool = True):
        super().__init__(in_features, num_classes)
        if zero_init:
            nn.init.zeros_(self.weight)
        else:
            nn.init.trunc_normal_(self.weight, std=0.02)
        nn.init.zeros_(self.bias)

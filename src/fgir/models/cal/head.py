"""CAL's head on a feature map (arXiv 2108.08728, Sections 3.1-3.2): WS-DAN attention maps, bilinear
attention pooling, a linear classifier without bias on the pooled features times a scale (100 in
the reference code), and in training the effect of the learned maps, logits minus the logits of the same
features pooled by random maps; plus the centre loss and its centres."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fgir.models.layers.bilinear_pooling import AttentionMaps, bilinear_attention_pooling

RANDOM_MAP_HIGH = 2.0  # counterfactual maps are uniform in [0, 2), i.e. mean 1 as the reference's


@dataclass
class HeadOutput:
    logits: torch.Tensor  # (B, classes)
    effect: torch.Tensor | None  # (B, classes): logits minus counterfactual logits; training only
    features: torch.Tensor  # (B, M * C) pooled, normalised
    attention: torch.Tensor  # (B, M, H, W)


class CounterfactualHead(nn.Module):
    def __init__(self, channels: int, maps: int, num_classes: int, logit_scale: float, zero_init: bool = False):
        super().__init__()
        self.logit_scale = logit_scale
        self.attention = AttentionMaps(channels, maps)
        self.fc = nn.Linear(maps * channels, num_classes, bias=False)
        if zero_init:
            nn.init.zeros_(self.fc.weight)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features * self.logit_scale)

    def forward(self, feature_maps: torch.Tensor) -> HeadOutput:
        attention = self.attention(feature_maps)
        features = bilinear_attention_pooling(feature_maps, attention)
        logits = self.classify(features)
        effect = None
        if self.training:
            random_maps = torch.empty_like(attention).uniform_(0, RANDOM_MAP_HIGH)
            effect = logits - self.classify(bilinear_attention_pooling(feature_maps, random_maps))
        return HeadOutput(logits, effect, features, attention)


def centre_loss(features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Sum of squared distances of each sample's features to its class centre, over the batch size."""
    return (features - centres).pow(2).sum() / features.shape[0]


def step_centres(centres: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """The batch's class centres, L2-normalised, as the loss uses them; then, in place, each class's
    centre moves by beta times (its sample's features - that normalised centre). As in the reference
    code, a class met twice in a batch moves once, by one of its samples (an indexed write)."""
    batch = F.normalize(centres[labels], dim=-1)
    centres[labels] += beta * (features.detach().to(centres.dtype) - batch)
    return batch

"""The plain ViT classifier (method `vit`): backbone -> pooled token -> linear head."""

from __future__ import annotations

import torch
from torch import nn

from fgir.config import ModelConfig
from fgir.methods import register_method
from fgir.models.backbone import Backbone
from fgir.models.heads import LinearHead


class ViTClassifier(nn.Module):
    def __init__(self, backbone: Backbone, num_classes: int, zero_init_head: bool = True):
        super().__init__()
        self.backbone = backbone
        self.head = LinearHead(backbone.embed_dim, num_classes, zero_init=zero_init_head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.forward_features(images)
        return self.head(self.backbone.pool(tokens))


def build_vit(backbone: Backbone, num_classes: int, model: ModelConfig) -> ViTClassifier:
    return ViTClassifier(backbone, num_classes, zero_init_head=model.zero_init_head)


register_method("vit", build=build_vit)

"""CNN baselines (method `cnn`, Animesion: arXiv 2101.08674, Section 4): a timm network such as ResNet-18/50/152 without its
classifier, then a linear head. `model.backbone` names it (e.g. `resnet50.tv_in1k`, the torchvision
weights the Animesion reference used); weights come from the hub or `model.weights` exactly as for
ViTs. The whole network is fine-tuned (the reference froze pretrained ResNets and trained only the
classifier, which does not make a fair baseline for fine-tuned ViTs)."""

from __future__ import annotations

import torch
from torch import nn

from fgir.config import ModelConfig
from fgir.methods import register_method
from fgir.models.heads import LinearHead
from fgir.models.weights import create_headless


class CNNClassifier(nn.Module):
    def __init__(self, network: nn.Module, num_classes: int, zero_init_head: bool = True):
        super().__init__()
        self.network = network  # num_classes=0: timm returns the pooled features (B, num_features)
        self.head = LinearHead(network.num_features, num_classes, zero_init=zero_init_head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.network(images))


def build_cnn(model: ModelConfig, num_classes: int, pretrained: bool | None = None) -> nn.Module:
    """Built without a ViT Backbone; a CNN takes any image size."""
    network = create_headless(
        model.backbone,
        pretrained=model.pretrained if pretrained is None else pretrained,
        weights=model.weights,
        drop_path_rate=model.drop_path,
        **model.backbone_args,
    )
    return CNNClassifier(network, num_classes, zero_init_head=model.zero_init_head)


register_method("cnn", build=build_cnn, own_network=True)

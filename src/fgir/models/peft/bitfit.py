"""BitFit (Ben Zaken et al., ACL 2022, arXiv 2106.10199) on a frozen backbone: method `bitfit`. Only the backbone's bias
terms train (every linear, the patch-embedding convolution and the LayerNorms), plus the head and
whatever model.peft adds (CLS token by default)."""

from __future__ import annotations

from fgir.config import ModelConfig
from fgir.methods import register_method
from fgir.models.backbone import Backbone
from fgir.models.peft.freezing import FrozenBackboneConfig, freeze_backbone
from fgir.models.peft.frozen_classifier import FrozenClassifier


def build_bitfit(backbone: Backbone, num_classes: int, model: ModelConfig) -> FrozenClassifier:
    freeze_backbone(backbone, model.peft)
    for name, parameter in backbone.named_parameters():
        if name.endswith(".bias"):
            parameter.requires_grad_(True)
    return FrozenClassifier(backbone, num_classes, zero_init_head=model.zero_init_head)


register_method("bitfit", build=build_bitfit, config=FrozenBackboneConfig)

"""Linear probe (method `linear`): the frozen backbone's pooled token -> a trainable linear head. The
CLS token, position embedding and final norm train only if `model.peft` says so."""

from __future__ import annotations

from fgir.config import ModelConfig
from fgir.methods import register_method
from fgir.models.backbone import Backbone
from fgir.models.peft.freezing import FrozenBackboneConfig, freeze_backbone
from fgir.models.peft.frozen_classifier import FrozenClassifier


def build_linear(backbone: Backbone, num_classes: int, model: ModelConfig) -> FrozenClassifier:
    freeze_backbone(backbone, model.peft)
    return FrozenClassifier(backbone, num_classes, zero_init_head=model.zero_init_head)


register_method("linear", build=build_linear, config=FrozenBackboneConfig)

"""LoRA (Hu et al., ICLR 2022, arXiv 2106.09685) through the peft library on a frozen backbone: method `lora`.

Each linear named in model.peft.lora_targets (by default the fused qkv and both MLP linears of every
block) gets a trainable low-rank update W + (alpha / r) B A, with B starting at zero so training starts
from the pretrained model. The head trains fully, the CLS token if model.peft says so. The update is
linear, so it can be merged into the weights for deployment (fgir.models.peft.merge).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from fgir.config import ConfigError, ModelConfig
from fgir.methods import register_method
from fgir.models.backbone import Backbone
from fgir.models.peft.freezing import FrozenBackboneConfig, freeze_backbone
from fgir.models.peft.frozen_classifier import FrozenClassifier


@dataclass
class LoRAConfig(FrozenBackboneConfig):
    """LoRA (arXiv 2106.09685, Section 4) on the frozen backbone."""

    POSITIVE: ClassVar[tuple[str, ...]] = ("lora_rank", "lora_alpha")
    FRACTIONS: ClassVar[tuple[str, ...]] = ("lora_dropout",)

    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["qkv", "fc1", "fc2"])


class LoRAViT(FrozenClassifier):
    def __init__(self, backbone: Backbone, num_classes: int, model: ModelConfig):
        # peft imports transformers (slow to import): only when a LoRA model is built.
        from peft import LoraConfig, inject_adapter_in_model

        peft = model.peft
        # Frozen (and tagged) before injection, so the LoRA layers added next are not tagged and train.
        freeze_backbone(backbone, peft)
        trainable = [parameter for parameter in backbone.parameters() if parameter.requires_grad]
        config = LoraConfig(r=peft.lora_rank, lora_alpha=peft.lora_alpha, lora_dropout=peft.lora_dropout,
                            target_modules=list(peft.lora_targets))
        try:
            inject_adapter_in_model(config, backbone.vit)
        except ValueError as err:  # peft's message when no module matches the targets
            raise ConfigError(
                f"model.peft.lora_targets={list(peft.lora_targets)}: {err} (a timm ViT's block linears are "
                "qkv, proj, fc1, fc2)"
            ) from err
        # peft leaves only LoRA weights trainable; the CLS token etc. asked for by the config train too.
        for parameter in trainable:
            parameter.requires_grad_(True)
        super().__init__(backbone, num_classes, zero_init_head=model.zero_init_head)

    def canonical_key(self, key: str) -> str:
        """Without the `.base_layer` that peft inserts above each wrapped linear's own weights."""
        return re.sub(r"\.base_layer(?=\.)", "", key)


def build_lora(backbone: Backbone, num_classes: int, model: ModelConfig) -> LoRAViT:
    return LoRAViT(backbone, num_classes, model)


register_method("lora", build=build_lora, config=LoRAConfig)

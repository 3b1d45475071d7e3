"""Deployment of a LoRA model: the low-rank updates are linear, so they fold into the weights they
adapt (W <- W + (alpha / r) B A) and the model becomes a plain `vit` classifier. Its checkpoint is an
ordinary full fgir checkpoint (method `vit`, see fgir.tools.merge_lora), so evaluation, prediction
and export need neither peft nor the pretrained weights."""

from __future__ import annotations

import copy

from torch import nn

from fgir.errors import FgirError
from fgir.models.classifier import ViTClassifier
from fgir.models.peft.lora import LoRAViT


def merge_lora(model: nn.Module) -> ViTClassifier:
    """A `vit` classifier computing what the LoRA model `model` computes (to float rounding), with every
    LoRA update merged into its linear. `model` itself is left as it was."""
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, LoRAViT):
        raise FgirError(f"only a LoRA model (method 'lora') can be merged, not a {type(model).__name__}")
    merged = copy.deepcopy(model)
    backbone = merged.backbone
    for name, module in list(backbone.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)  # refuses updates that would put NaN/inf into the weights
            parent, _, attribute = name.rpartition(".")
            setattr(backbone.get_submodule(parent), attribute, module.get_base_layer())
    backbone.requires_grad_(True)  # a plain model: everything trains if it is fine-tuned further
    classifier = ViTClassifier(backbone, merged.head.out_features)
    classifier.head = merged.head
    return classifier.train(model.training)

"""Method name -> model. Each method module registers a builder here; the engine only calls
`build_model` and never looks inside a method."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from fgir.config import ConfigError, ModelConfig
from fgir.models.backbone import Backbone
from fgir.models.classifier import ViTClassifier
from fgir.models.cnn import build_cnn
from fgir.models.glsim import build_glsim
from fgir.models.ifa import build_ifa
from fgir.models.ila import build_ila, build_ila_plus, build_ila_pp
from fgir.models.peft.adapters import build_adapter, build_convpass
from fgir.models.peft.bitfit import build_bitfit
from fgir.models.peft.linear_probe import build_linear
from fgir.models.peft.lora import build_lora
from fgir.models.peft.vpt import build_vpt_deep, build_vpt_shallow

Builder = Callable[[Backbone, int, ModelConfig], nn.Module]


def _build_vit(backbone: Backbone, num_classes: int, model: ModelConfig) -> nn.Module:
    return ViTClassifier(backbone, num_classes, zero_init_head=model.zero_init_head)


METHODS: dict[str, Builder] = {
    "vit": _build_vit,
    "glsim": build_glsim,
    "vit_ifa": build_ifa,
    "ila": build_ila,
    "ila_plus": build_ila_plus,
    "ila_pp": build_ila_pp,
    "adapter": build_adapter,
    "convpass": build_convpass,
    "linear": build_linear,
    "vpt_shallow": build_vpt_shallow,
    "vpt_deep": build_vpt_deep,
    "lora": build_lora,
    "bitfit": build_bitfit,
}

# Methods that build their own network instead of one around a ViT Backbone.
NETWORKS: dict[str, Callable[[ModelConfig, int, bool | None], nn.Module]] = {
    "cnn": build_cnn,
}


def build_backbone(model: ModelConfig, image_size: int, pretrained: bool | None = None) -> Backbone:
    return Backbone.create(
        model.backbone,
        pretrained=model.pretrained if pretrained is None else pretrained,
        weights=model.weights,
        img_size=image_size,
        drop_path_rate=model.drop_path,
        **model.backbone_args,
    )


def build_model(model: ModelConfig, num_classes: int, image_size: int, pretrained: bool | None = None) -> nn.Module:
    """Build the method named by `model.method`. `pretrained=False` skips weight loading (used when
    a checkpoint will overwrite every weight anyway)."""
    known = [*METHODS, *NETWORKS]
    if model.method not in known:
        close = difflib.get_close_matches(model.method, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown method model.method='{model.method}' (known: {', '.join(known)}){hint}")
    if model.method in NETWORKS:
        return NETWORKS[model.method](model, num_classes, pretrained)
    backbone = build_backbone(model, image_size, pretrained)
    return METHODS[model.method](backbone, num_classes, model)

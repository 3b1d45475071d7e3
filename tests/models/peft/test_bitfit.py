"""BitFit: only the backbone's bias terms (plus CLS token and head) get gradients, their count is
L * 11 D + 2 D for a ViT with MLP ratio 4, and a few steps lower the loss."""

import pytest
import torch

from conftest import TINY_VIT, fit_steps, tinted_batch, tiny_backbone
from fgir.config import load_config, model_config
from fgir.methods import build_model
from fgir.models.backbone import Backbone
from fgir.models.peft.bitfit import build_bitfit
from fgir.models.peft.freezing import FrozenBackboneConfig
from fgir.models.peft.frozen_classifier import FrozenClassifier


def bitfit(**peft) -> FrozenClassifier:
    return build_bitfit(tiny_backbone(), 3, model_config("bitfit", zero_init_head=False, peft=FrozenBackboneConfig(**peft)))


@pytest.mark.parametrize("train_cls_token", [True, False])
def test_gradient_census(train_cls_token):
    model = bitfit(train_cls_token=train_cls_token).train()
    model(torch.randn(2, 3, 32, 32)).square().sum().backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    biases = {name for name, _ in model.backbone.named_parameters(prefix="backbone") if name.endswith(".bias")}
    assert len(biases) == 2 * 6 + 2  # per block norm1, qkv, proj, norm2, fc1, fc2; patch embedding, final norm
    expected = biases | {"head.weight", "head.bias"} | ({"backbone.vit.cls_token"} if train_cls_token else set())
    assert with_grad == expected
    assert with_grad == {name for name, p in model.named_parameters() if p.requires_grad}


def test_bias_count_on_vit_b16():
    # Per block: norm1 D, qkv 3D, proj D, norm2 D, fc1 4D, fc2 D = 11 D; plus the patch embedding and the
    # final norm: 12 * 11 * 768 + 2 * 768 = 102,912.
    with torch.device("meta"):
        model = build_bitfit(Backbone.create("vit_base_patch16_224", pretrained=False, img_size=224), 10,
                             model_config("bitfit", peft=FrozenBackboneConfig(train_cls_token=False)))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 102_912 + 768 * 10 + 10


def test_factory_builds_bitfit_and_a_few_steps_lower_the_loss():
    config = load_config(None, ["model.backbone=vit_tiny_patch16_224", "model.pretrained=false", TINY_VIT,
                                "model.method=bitfit"])
    model = build_model(config.model, 3, 32)
    assert isinstance(model, FrozenClassifier) and model.backbone.vit.blocks[0].attn.qkv.bias.requires_grad
    torch.manual_seed(0)
    model = bitfit().train()
    images, labels = tinted_batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = fit_steps(model, images, labels, 10, optimizer)
    assert losses[-1] < 0.85 * losses[0]

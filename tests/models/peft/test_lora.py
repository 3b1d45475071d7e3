"""LoRA through peft: each targeted linear computes x (W + alpha/r B A)^T + b, the model starts equal to
the frozen backbone, only LoRA weights, CLS token and head get gradients, counts are r * (in + out)
per targeted linear, and the merged `vit` model (and its checkpoint) gives the same outputs."""

import pytest
import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from torch import nn

from conftest import TINY_VIT, fit_steps, tinted_batch, tiny_backbone
from fgir.config import ConfigError, load_config, model_config
from fgir.engine.checkpoint import restore_model, save_checkpoint
from fgir.errors import FgirError
from fgir.methods import build_model
from fgir.models.backbone import Backbone
from fgir.models.classifier import ViTClassifier
from fgir.models.peft.lora import LoRAConfig, LoRAViT, build_lora
from fgir.models.peft.merge import merge_lora
from fgir.tools.merge_lora import save_merged_lora

RANK, ALPHA = 4, 8.0


def lora(backbone: Backbone | None = None, perturb: bool = True, **peft) -> LoRAViT:
    settings = {"lora_rank": RANK, "lora_alpha": ALPHA, **peft}
    model = build_lora(backbone or tiny_backbone(), 3, model_config("lora", zero_init_head=False, peft=LoRAConfig(**settings)))
    return perturbed(model) if perturb else model


def perturbed(model: LoRAViT) -> LoRAViT:
    """B random instead of zero, so the updates (and the gradients of A) are not zero."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.1)
    return model


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def test_each_targeted_linear_adds_the_scaled_low_rank_update():
    model = lora()
    layers = lora_layers(model)
    targeted = ("attn.qkv", "mlp.fc1", "mlp.fc2")
    assert sorted(layers) == sorted(f"backbone.vit.blocks.{b}.{n}" for b in (0, 1) for n in targeted)
    for layer in layers.values():
        base, a, b = layer.get_base_layer(), layer.lora_A["default"].weight, layer.lora_B["default"].weight
        x = torch.randn(5, base.in_features)
        expected = F.linear(x, base.weight + (ALPHA / RANK) * b @ a, base.bias)
        # Two orders of the same fp32 sums (outputs of magnitude ~5): equal to a few ulps.
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_starts_equal_to_the_frozen_backbone():
    images = torch.randn(2, 3, 32, 32)
    plain = tiny_backbone()
    model = lora(tiny_backbone(), perturb=False).eval()
    with torch.no_grad():
        assert torch.equal(model.backbone.forward_features(images), plain.forward_features(images))


@pytest.mark.parametrize("train_cls_token", [True, False])
def test_gradient_census(train_cls_token):
    model = lora(train_cls_token=train_cls_token).train()
    model(torch.randn(2, 3, 32, 32)).square().sum().backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    expected = {f"{name}.lora_{ab}.default.weight" for name in lora_layers(model) for ab in "AB"}
    expected |= {"head.weight", "head.bias"} | ({"backbone.vit.cls_token"} if train_cls_token else set())
    assert with_grad == expected
    assert with_grad == {name for name, p in model.named_parameters() if p.requires_grad}


def test_lora_dropout_trains_while_the_backbone_stays_in_eval_mode():
    model = lora(lora_dropout=0.5).train()
    dropouts = [m for name, m in model.named_modules() if "lora_dropout" in name and isinstance(m, nn.Dropout)]
    assert len(dropouts) == 6 and all(m.training for m in dropouts)
    vit = model.backbone.vit
    frozen = [vit, *vit.blocks, *(layer.get_base_layer() for layer in lora_layers(model).values())]
    assert not any(m.training for m in frozen)


def test_counts_are_rank_times_in_plus_out_per_targeted_linear():
    targets = ["qkv", "fc2"]
    plain = tiny_backbone()
    formula = sum(RANK * (m.in_features + m.out_features) for name, m in plain.named_modules()
                  if isinstance(m, nn.Linear) and name.split(".")[-1] in targets)
    model = lora(plain, train_cls_token=False, lora_targets=targets)
    head = 32 * 3 + 3
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == formula + head
    # ViT-B/16, rank 8 on qkv, fc1, fc2: 12 * 8 * ((768 + 2304) + (768 + 3072) + (3072 + 768)) = 1,032,192.
    with torch.device("meta"):
        vit_b = build_lora(Backbone.create("vit_base_patch16_224", pretrained=False, img_size=224), 10, model_config("lora"))
    assert sum(p.numel() for p in vit_b.parameters() if p.requires_grad) == 1_032_192 + 768 + 768 * 10 + 10


def test_unknown_target_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.peft.lora_targets=\['qkvv'\]"):
        lora(lora_targets=["qkvv"])


def test_factory_builds_lora_and_a_few_steps_lower_the_loss():
    config = load_config(None, ["model.backbone=vit_tiny_patch16_224", "model.pretrained=false", TINY_VIT,
                                "model.method=lora", "model.peft.lora_rank=2"])
    assert isinstance(build_model(config.model, 3, 32), LoRAViT)
    torch.manual_seed(0)
    model = lora(perturb=False).train()
    images, labels = tinted_batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = fit_steps(model, images, labels, 10, optimizer)
    assert losses[-1] < 0.85 * losses[0]


def test_merge_gives_a_plain_vit_with_the_same_outputs():
    model = lora().eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
        merged = merge_lora(model)
        assert isinstance(merged, ViTClassifier) and not merged.training
        assert not lora_layers(merged) and all(p.requires_grad for p in merged.parameters())
        assert merged.state_dict().keys() == ViTClassifier(tiny_backbone(), 3).state_dict().keys()
        torch.testing.assert_close(merged(images), before, rtol=0, atol=1e-5)
        assert torch.equal(model(images), before)  # the LoRA model is left as it was
    with pytest.raises(FgirError, match="only a LoRA model"):
        merge_lora(merged)


def test_merged_checkpoint_is_a_vit_checkpoint_with_the_same_outputs(tmp_path):
    config = load_config(None, ["model.backbone=vit_tiny_patch16_224", "model.pretrained=false", TINY_VIT,
                                "model.method=lora", "data.image_size=32"])
    model = perturbed(build_model(config.model, 3, 32))
    save_checkpoint(tmp_path / "lora.safetensors", model, config, ["a", "b", "c"], epoch=2, global_step=7)
    path = save_merged_lora(tmp_path / "lora.safetensors", tmp_path / "merged.safetensors")
    restored, checkpoint = restore_model(path)
    assert checkpoint.config.model.method == "vit" and isinstance(restored, ViTClassifier)
    assert (checkpoint.class_names, checkpoint.epoch, checkpoint.global_step) == (["a", "b", "c"], 2, 7)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(restored(images), model.eval()(images), rtol=0, atol=1e-5)

"""VPT-Shallow / VPT-Deep: the forward pass equals timm's own forward with the prompts put in by hooks,
only prompts, CLS token and head get gradients, counts follow L * prompt_length * D, prompt dropout
follows train/eval mode, and a few steps lower the loss."""

import math

import pytest
import torch

from conftest import TINY_VIT, fit_steps, tinted_batch, tiny_backbone
from fgir.config import ConfigError, load_config, model_config
from fgir.methods import build_model
from fgir.models.backbone import Backbone
from fgir.models.peft.vpt import PromptedViT, VPTConfig, build_vpt_deep, build_vpt_shallow

PROMPTS = 3


def vpt(deep: bool, backbone: Backbone | None = None, **peft) -> PromptedViT:
    model = model_config("vpt_deep", zero_init_head=False, peft=VPTConfig(**{"prompt_length": PROMPTS, **peft}))
    build = build_vpt_deep if deep else build_vpt_shallow
    return build(backbone or tiny_backbone(), 3, model)


def hooked_reference(model: PromptedViT, images: torch.Tensor) -> torch.Tensor:
    """timm's `forward_features` with the prompts inserted after `norm_pre` (and, for VPT-Deep, swapped
    in before each later block) by hooks, then the prompts cut out and timm's own pooling."""
    vit, prefix = model.backbone.vit, model.backbone.num_prefix_tokens
    batch = images.shape[0]

    def prompts(layer):
        return model.prompts[layer].expand(batch, -1, -1)

    hooks = [vit.norm_pre.register_forward_hook(
        lambda module, args, out: torch.cat([out[:, :prefix], prompts(0), out[:, prefix:]], dim=1))]
    if model.deep:
        for layer in range(1, len(vit.blocks)):
            hooks.append(vit.blocks[layer].register_forward_pre_hook(
                lambda module, args, layer=layer: (torch.cat(
                    [args[0][:, :prefix], prompts(layer), args[0][:, prefix + PROMPTS:]], dim=1),)))
    try:
        tokens = vit.forward_features(images)
    finally:
        for hook in hooks:
            hook.remove()
    tokens = torch.cat([tokens[:, :prefix], tokens[:, prefix + PROMPTS:]], dim=1)
    return model.head(vit.forward_head(tokens, pre_logits=True))


BACKBONES = {
    "cls": {},
    "registers_avg": dict(reg_tokens=2, class_token=False, global_pool="avg"),
    "cls_and_registers": dict(reg_tokens=2),
}


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("layout", BACKBONES)
def test_forward_equals_timm_with_prompts_inserted_by_hooks(deep, layout):
    model = vpt(deep, tiny_backbone(**BACKBONES[layout])).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(images)
        assert torch.equal(logits, hooked_reference(model, images))
        # The prompts matter: other prompts, other logits.
        model.prompts.copy_(torch.randn_like(model.prompts))
        assert not torch.allclose(model(images), logits, rtol=1e-2)


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("train_cls_token", [True, False])
def test_gradient_census(deep, train_cls_token):
    model = vpt(deep, train_cls_token=train_cls_token).train()
    model(torch.randn(2, 3, 32, 32)).square().sum().backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    expected = {"prompts", "head.weight", "head.bias"} | ({"backbone.vit.cls_token"} if train_cls_token else set())
    assert with_grad == expected
    assert with_grad == {name for name, p in model.named_parameters() if p.requires_grad}
    # Every block's prompts (VPT-Deep) reach the loss.
    assert all(model.prompts.grad[layer].abs().sum() > 0 for layer in range(len(model.prompts)))


def test_prompt_counts_and_init_on_vit_b16():
    with torch.device("meta"):
        backbone = Backbone.create("vit_base_patch16_224", pretrained=False, img_size=224)
        deep = build_vpt_deep(backbone, 10, model_config("vpt_deep"))
    assert deep.prompts.shape == (12, 100, 768)  # L * prompt_length * D = 921,600
    assert sum(p.numel() for p in deep.parameters() if p.requires_grad) == 921_600 + 768 + 768 * 10 + 10
    shallow = vpt(False, prompt_length=50)
    assert shallow.prompts.shape == (1, 50, 32)
    # Uniform in +-sqrt(6 / (3 * patch area + D)), the patch embedding's fan-in (VPT's init).
    bound = math.sqrt(6 / (3 * 8 * 8 + 32))
    assert shallow.prompts.abs().max() <= bound and shallow.prompts.abs().max() > 0.9 * bound


def test_prompt_dropout_only_in_training():
    model = vpt(True, prompt_dropout=0.5)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(model.train()(images), model(images))
        assert torch.equal(model.eval()(images), model(images))


def test_bad_prompt_length_is_a_config_error():
    with pytest.raises(ConfigError, match="config key 'model.peft.prompt_length' must be > 0, got 0"):
        vpt(False, prompt_length=0)


@pytest.mark.parametrize("method", ["vpt_shallow", "vpt_deep"])
def test_factory_builds_the_method(method):
    config = load_config(None, ["model.backbone=vit_tiny_patch16_224", "model.pretrained=false", TINY_VIT,
                                f"model.method={method}", "model.peft.prompt_length=4"])
    model = build_model(config.model, 3, 32)
    assert isinstance(model, PromptedViT) and model.deep == (method == "vpt_deep")
    assert model.prompts.shape == (2 if model.deep else 1, 4, 32)


@pytest.mark.parametrize("deep", [False, True])
def test_a_few_steps_lower_the_loss(deep):
    torch.manual_seed(0)
    model = vpt(deep).train()
    images, labels = tinted_batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = fit_steps(model, images, labels, 10, optimizer)
    assert losses[-1] < 0.85 * losses[0]

"""Backbone: token access matches timm's own forward exactly, and modules inserted between blocks run
where and as often as asked."""

import pytest
import timm
import torch
from torch import nn

from conftest import TINY, tiny_backbone
from fgir.models.backbone import Backbone

DEPTH = 3  # one more block than the shared tiny ViT, so "between" indices have a middle
VARIANTS = {
    "cls": dict(img_size=32),
    "registers": dict(img_size=32, reg_tokens=4),
    "no_cls_avg": dict(img_size=32, class_token=False, global_pool="avg"),
    "registers_avg": dict(img_size=32, class_token=False, reg_tokens=4, global_pool="avg"),
    "non_square": dict(img_size=(32, 48)),
    "patch16": dict(img_size=64, patch_size=16),
}




def images_for(backbone: Backbone, batch: int = 2) -> torch.Tensor:
    height, width = backbone.vit.patch_embed.img_size
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))


class AddConstant(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value
        self.calls = 0

    def forward(self, tokens):
        self.calls += 1
        return tokens + self.value


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_features_equals_timm(variant):
    backbone = tiny_backbone(depth=DEPTH, **VARIANTS[variant])
    images = images_for(backbone)
    assert torch.equal(backbone.forward_features(images), backbone.vit.forward_features(images))


@pytest.mark.parametrize("variant", VARIANTS)
def test_pool_equals_timm_head_input(variant):
    backbone = tiny_backbone(depth=DEPTH, **VARIANTS[variant])
    images = images_for(backbone)
    pooled = backbone.pool(backbone.forward_features(images))
    assert pooled.shape == (2, backbone.embed_dim)
    assert torch.equal(pooled, backbone.vit(images))  # the headless ViT returns the pre-logits feature


def test_pool_is_cls_token_or_mean_of_patch_tokens():
    cls_model = tiny_backbone(depth=DEPTH, reg_tokens=4)
    tokens = cls_model.forward_features(images_for(cls_model))
    assert torch.equal(cls_model.pool(tokens), tokens[:, 0])

    avg_model = tiny_backbone(depth=DEPTH, class_token=False, reg_tokens=4, global_pool="avg")
    tokens = avg_model.forward_features(images_for(avg_model))
    patch_mean = tokens[:, 4:].mean(dim=1)  # registers excluded
    assert torch.allclose(avg_model.pool(tokens), avg_model.vit.fc_norm(patch_mean), atol=1e-6)


@pytest.mark.parametrize(
    "variant, prefix, has_cls, patch, grid",
    [
        ("cls", 1, True, (8, 8), (4, 4)),
        ("registers", 5, True, (8, 8), (4, 4)),
        ("no_cls_avg", 0, False, (8, 8), (4, 4)),
        ("registers_avg", 4, False, (8, 8), (4, 4)),
        ("non_square", 1, True, (8, 8), (4, 6)),
        ("patch16", 1, True, (16, 16), (4, 4)),
    ],
)
def test_token_layout(variant, prefix, has_cls, patch, grid):
    backbone = tiny_backbone(depth=DEPTH, **VARIANTS[variant])
    tokens = backbone.embed(images_for(backbone))
    assert backbone.num_prefix_tokens == prefix
    assert backbone.has_cls_token is has_cls
    assert backbone.patch_size == patch
    assert backbone.grid_size == grid
    assert backbone.grid_for(*backbone.vit.patch_embed.img_size) == grid
    assert tokens.shape == (2, prefix + grid[0] * grid[1], backbone.embed_dim)
    assert backbone.patch_tokens(tokens).shape == (2, grid[0] * grid[1], backbone.embed_dim)


def test_properties_expose_the_timm_modules():
    backbone = tiny_backbone(depth=DEPTH)
    assert backbone.num_blocks == 3
    assert backbone.embed_dim == 32
    assert backbone.blocks is backbone.vit.blocks
    assert backbone.norm is backbone.vit.norm
    assert backbone.model_name == "vit_tiny_patch16_224"


def test_grid_for_other_sizes_needs_dynamic_img_size():
    static = tiny_backbone(depth=DEPTH)
    with pytest.raises(ValueError, match=r"32x32 images only, not 48x40.*dynamic_img_size=True"):
        static.grid_for(48, 40)

    dynamic = tiny_backbone(depth=DEPTH, dynamic_img_size=True)
    assert dynamic.grid_for(48, 40) == (6, 5)
    tokens = dynamic.forward_features(torch.randn(1, 3, 48, 40))
    assert tokens.shape == (1, 1 + 6 * 5, 32)


def test_run_blocks_equals_the_block_sequence():
    backbone = tiny_backbone(depth=DEPTH)
    tokens = backbone.embed(images_for(backbone))
    expected = backbone.vit.blocks(tokens)
    assert torch.equal(backbone.run_blocks(tokens), expected)
    assert torch.equal(backbone.run_blocks(tokens, between={0: nn.Identity(), 2: nn.Identity()}), expected)
    # In two segments, as a method that inserts its own step in the middle would run them.
    assert torch.equal(backbone.run_blocks(backbone.run_blocks(tokens, 0, 1), 1), expected)


def test_between_runs_once_right_after_its_block():
    backbone = tiny_backbone(depth=DEPTH)
    images = images_for(backbone)
    add = AddConstant(0.5)
    final, _ = backbone.forward_tokens(images, between={0: add})
    assert add.calls == 1

    tokens = backbone.embed(images)
    tokens = backbone.blocks[0](tokens) + 0.5
    for block in backbone.blocks[1:]:
        tokens = block(tokens)
    assert torch.equal(final, backbone.norm(tokens))
    assert not torch.equal(final, backbone.forward_features(images))


def test_between_may_change_the_number_of_tokens():
    backbone = tiny_backbone(depth=DEPTH)
    keep = backbone.num_prefix_tokens + 4

    def drop_patches(tokens):
        return tokens[:, :keep]

    final, layers = backbone.forward_tokens(
        images_for(backbone), return_layers=(0, 1, 2), between={1: drop_patches}
    )
    assert [layers[i].shape[1] for i in (0, 1, 2)] == [1 + 4 * 4, keep, keep]
    assert final.shape == (2, keep, backbone.embed_dim)


def test_return_layers_equal_a_manual_loop():
    backbone = tiny_backbone(depth=DEPTH, reg_tokens=4)
    images = images_for(backbone)
    add = AddConstant(-0.25)
    final, layers = backbone.forward_tokens(images, return_layers=(2, 0, 1), between={1: add})

    tokens = backbone.embed(images)
    expected = {}
    for index, block in enumerate(backbone.blocks):
        tokens = block(tokens)
        if index == 1:
            tokens = tokens - 0.25
        expected[index] = tokens
    assert sorted(layers) == [0, 1, 2]
    for index in expected:
        assert torch.equal(layers[index], expected[index]), index
    assert torch.equal(final, backbone.norm(expected[2]))
    assert add.calls == 1


def test_block_indices_out_of_range_are_named():
    backbone = tiny_backbone(depth=DEPTH)
    images = images_for(backbone)
    with pytest.raises(ValueError, match=r"return_layers: block indices \[3\] outside 0..2"):
        backbone.forward_tokens(images, return_layers=(0, 3))
    with pytest.raises(ValueError, match=r"between: block indices \[-1\] outside 0..2"):
        backbone.forward_tokens(images, between={-1: nn.Identity()})
    with pytest.raises(ValueError, match=r"blocks \[2:5\] outside the 3 blocks"):
        backbone.run_blocks(backbone.embed(images), 2, 5)


def test_grad_checkpointing_recomputes_blocks_and_keeps_results():
    images = images_for(tiny_backbone(depth=DEPTH))
    results = []
    for enable in (False, True):
        backbone = tiny_backbone(depth=DEPTH).train()
        backbone.set_grad_checkpointing(enable)
        calls = []
        backbone.blocks[0].register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        output = backbone.pool(backbone.forward_features(images))
        output.square().sum().backward()
        # A checkpointed block runs again in the backward pass instead of keeping its activations.
        assert len(calls) == (2 if enable else 1)
        results.append((output, backbone.blocks[0].attn.qkv.weight.grad))
    (plain, plain_grad), (checkpointed, checkpointed_grad) = results
    assert torch.equal(plain, checkpointed)
    assert torch.allclose(plain_grad, checkpointed_grad, atol=1e-6)


def test_wrapping_rejects_what_methods_cannot_use():
    with pytest.raises(TypeError, match="timm VisionTransformer, got Linear"):
        Backbone(nn.Linear(2, 2))
    with_head = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, **{**TINY, "depth": DEPTH})
    with pytest.raises(ValueError, match="10-class head.*num_classes=0"):
        Backbone(with_head)
    no_pool = timm.create_model("vit_tiny_patch16_224", num_classes=0, global_pool="", img_size=32, **{**TINY, "depth": DEPTH})
    with pytest.raises(ValueError, match="global_pool=''"):
        Backbone(no_pool)
    wrapped = Backbone(timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, **{**TINY, "depth": DEPTH}))
    assert wrapped.model_name == "vit_tiny_patch16_224"

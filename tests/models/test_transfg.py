import pytest
import torch
import torch.nn.functional as F
from method_checks import added_parameters, refused_before_work, trains_one_epoch, vit_b16

from conftest import tiny_backbone
from fgir.config import ConfigError, model_config
from fgir.models.attention_maps import block_with_scores
from fgir.models.transfg import TransFG, TransFGConfig, build_transfg, contrastive_loss, select_parts

CLASSES = 5
VIT_B_BLOCK = 2 * 768 + (768 * 2304 + 2304) + (768 * 768 + 768) + 2 * 768 + (768 * 3072 + 3072) + (3072 * 768 + 768)


def make(depth=3, **config) -> TransFG:
    return TransFG(tiny_backbone(depth=depth), CLASSES, TransFGConfig(**config), zero_init_head=False)


def parts_by_loops(maps: list[torch.Tensor]) -> torch.Tensor:
    """The part selection written out: per sample and head, the chain of products from the first
    layer up, then the patch with the largest CLS-row entry."""
    batch, heads = maps[0].shape[:2]
    picked = torch.empty(batch, heads, dtype=torch.long)
    for b in range(batch):
        for h in range(heads):
            product = torch.linalg.multi_dot([m[b, h] for m in reversed(maps)]) if len(maps) > 1 else maps[0][b, h]
            row = product[0].tolist()
            picked[b, h] = max(range(1, len(row)), key=row.__getitem__)
    return picked


def test_part_selection_equals_the_loop_of_matrix_products():
    torch.manual_seed(0)
    maps = [torch.randn(3, 4, 10, 10).softmax(-1) for _ in range(5)]
    assert torch.equal(select_parts(maps), parts_by_loops(maps))
    assert torch.equal(select_parts(maps[:1]), parts_by_loops(maps[:1]))


def test_the_fusion_block_runs_on_cls_and_the_selected_tokens_of_block_l_minus_2():
    model = make(depth=3).eval()
    images = torch.randn(2, 3, 32, 32)
    tokens, maps = model.backbone.embed(images), []
    for block in model.backbone.blocks[:2]:
        tokens, scores = block_with_scores(block, tokens)
        maps.append(scores.softmax(-1))
    picked = parts_by_loops(maps)
    chosen = torch.stack([tokens[b, picked[b]] for b in range(2)])
    fused = model.fusion(torch.cat([tokens[:, :1], chosen], dim=1))
    assert fused.shape == (2, 1 + 2, 32)  # CLS + one part per head
    expected = model.head(model.backbone.norm(fused)[:, 0])
    torch.testing.assert_close(model(images), expected)


def test_contrastive_loss_equals_the_pairwise_definition():
    torch.manual_seed(0)
    features, labels = torch.randn(6, 8), torch.tensor([0, 1, 0, 2, 1, 0])
    total = 0.0
    for i in range(6):
        for j in range(6):
            cos = F.cosine_similarity(features[i], features[j], dim=0)
            total += (1 - cos) if labels[i] == labels[j] else max(cos - 0.4, torch.tensor(0.0))
    torch.testing.assert_close(contrastive_loss(features, labels), total / 36)


def test_extra_loss_is_the_weighted_contrastive_loss_of_the_training_forward():
    model = make(contrastive_weight=0.1).train()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    model(images)
    stored = model._features
    torch.testing.assert_close(model.extra_loss(None, labels), 0.1 * contrastive_loss(stored, labels))
    soft = F.one_hot(labels, CLASSES).float() * 0.7 + 0.06  # mixed targets: the dominant class counts
    torch.testing.assert_close(model.extra_loss(None, soft), model.extra_loss(None, labels))
    model.eval()
    model(images)
    assert model.extra_loss(None, labels) is None
    off = make(contrastive_weight=0.0).train()
    off(images)
    assert off.extra_loss(None, labels) is None


@pytest.mark.parametrize("frozen", [True, False])
def test_gradient_census_frozen_and_full(frozen):
    model = make(frozen=frozen).train()
    model(torch.randn(4, 3, 32, 32)).logsumexp(dim=1).sum().backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == trainable
    assert not any(name.startswith("backbone.vit.blocks.2.") for name in trainable)  # the unused last block
    backbone = {name for name in trainable if name.startswith("backbone.")}
    if frozen:
        assert backbone == {"backbone.vit.cls_token"} and not model.backbone.blocks[0].training
    else:
        assert "backbone.vit.blocks.0.attn.qkv.weight" in backbone and "backbone.vit.norm.weight" in backbone


def test_added_parameters_for_vit_b16_at_448_and_overlapping_patches():
    with torch.device("meta"):
        model = build_transfg(vit_b16(448), 200, model_config("transfg"))
        overlapping = build_transfg(vit_b16(448), 200, model_config("transfg", transfg=TransFGConfig(overlap_stride=12)))
    assert VIT_B_BLOCK == 7_087_872
    assert added_parameters(model) == {"fusion": VIT_B_BLOCK, "head": 768 * 200 + 200}
    assert overlapping.backbone.vit.pos_embed.shape == (1, 1 + 37 * 37, 768)  # (448 - 16) / 12 + 1 = 37
    assert overlapping.backbone.vit.patch_embed.proj.stride == (12, 12)


def test_overlapping_patches_on_the_tiny_vit():
    model = make(overlap_stride=6).eval()
    tokens = model.backbone.embed(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 1 + 5 * 5, 32)  # (32 - 8) / 6 + 1 = 5
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, CLASSES)
    with pytest.raises(ConfigError, match="overlap_stride=9 is larger than the patch size 8"):
        make(overlap_stride=9)


@pytest.mark.parametrize("frozen", ["true", "false"])
def test_one_epoch_through_the_trainer(tiny_config, frozen):
    trains_one_epoch(tiny_config, "model.method=transfg", "model.transfg.overlap_stride=6", f"model.transfg.frozen={frozen}",
                     "model.backbone_args={patch_size: 8, embed_dim: 32, depth: 3, num_heads: 2}")


def test_an_overlap_stride_above_the_patch_size_is_refused_before_any_work(tmp_path, capsys):
    line = refused_before_work(tmp_path, capsys, "model.method=transfg", "model.transfg.overlap_stride=9")
    assert line.endswith("model.transfg.overlap_stride=9 is larger than the patch size 8: patches would leave gaps, "
                         "not overlap")

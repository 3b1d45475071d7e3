import math

import pytest
import torch
from method_checks import added_parameters, refused_before_work, trains_one_epoch, vit_b16

from conftest import tiny_backbone
from fgir.config import ConfigError, model_config
from fgir.models.attention_maps import block_with_scores
from fgir.models.ffvt import FFVT, FFVTConfig, build_ffvt, maws_scores

CLASSES = 5
VIT_B_BLOCK = 7_087_872  # one ViT-B block, counted in test_transfg.py


def make(depth=3, **config) -> FFVT:
    return FFVT(tiny_backbone(depth=depth), CLASSES, FFVTConfig(**config), zero_init_head=False)


def maws_by_definition(scores: torch.Tensor) -> torch.Tensor:
    """Per sample and token j: mean over heads of exp(s[j, 0]) / sum_i exp(s[i, 0]) times mean over
    heads of exp(s[0, j]) / sum_i exp(s[0, i])."""
    scores, (batch, heads, length, _) = scores.detach(), scores.shape
    out = torch.empty(batch, length)
    for b in range(batch):
        for j in range(length):
            to_cls = sum(math.exp(scores[b, h, j, 0]) / sum(math.exp(scores[b, h, i, 0]) for i in range(length))
                         for h in range(heads)) / heads
            from_cls = sum(math.exp(scores[b, h, 0, j]) / sum(math.exp(scores[b, h, 0, i]) for i in range(length))
                           for h in range(heads)) / heads
            out[b, j] = to_cls * from_cls
    return out


def test_maws_equals_its_definition():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(maws_scores(scores), maws_by_definition(scores))


def test_the_fusion_block_runs_on_cls_and_the_top_tokens_of_every_layer_but_the_last():
    model = make(depth=3, tokens_per_layer=3).eval()
    images = torch.randn(2, 3, 32, 32)
    tokens, chosen = model.backbone.embed(images), []
    for block in model.backbone.blocks[:2]:
        tokens, scores = block_with_scores(block, tokens)
        weights = maws_by_definition(scores)
        top = [sorted(range(weights.shape[1]), key=lambda j, b=b: -weights[b, j])[:3] for b in range(2)]
        chosen.append(torch.stack([tokens[b, top[b]] for b in range(2)]))
    fused = model.fusion(torch.cat([tokens[:, :1], *chosen], dim=1))
    assert fused.shape == (2, 1 + 2 * 3, 32)
    torch.testing.assert_close(model(images), model.head(model.fusion_norm(fused)[:, 0]))


@pytest.mark.parametrize("frozen", [True, False])
def test_gradient_census_frozen_and_full(frozen):
    model = make(frozen=frozen, tokens_per_layer=4).train()
    model(torch.randn(4, 3, 32, 32)).logsumexp(dim=1).sum().backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == trainable
    unused = {name for name, _ in model.named_parameters()
              if name.startswith(("backbone.vit.blocks.2.", "backbone.vit.norm."))}
    assert unused and not unused & trainable  # the last block and the backbone's final norm never run
    backbone = {name for name in trainable if name.startswith("backbone.")}
    assert (backbone == {"backbone.vit.cls_token"}) is frozen


def test_added_parameters_for_vit_b16_at_448():
    with torch.device("meta"):
        model = build_ffvt(vit_b16(448), 200, model_config("ffvt"))
    assert added_parameters(model) == {"fusion": VIT_B_BLOCK, "fusion_norm": 2 * 768, "head": 768 * 200 + 200}


def test_more_tokens_per_layer_than_a_layer_has_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"model\.ffvt\.tokens_per_layer=18 is more than the 17 tokens"):
        make(tokens_per_layer=18)
    line = refused_before_work(tmp_path, capsys, "model.method=ffvt", "model.ffvt.tokens_per_layer=18")
    assert line.endswith("model.ffvt.tokens_per_layer=18 is more than the 17 tokens of a layer")


@pytest.mark.parametrize("frozen", ["true", "false"])
def test_one_epoch_through_the_trainer(tiny_config, frozen):
    trains_one_epoch(tiny_config, "model.method=ffvt", "model.ffvt.tokens_per_layer=4", f"model.ffvt.frozen={frozen}",
                     "model.backbone_args={patch_size: 8, embed_dim: 32, depth: 3, num_heads: 2}")

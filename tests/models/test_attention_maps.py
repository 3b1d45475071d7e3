import pytest
import torch

from conftest import tiny_backbone
from fgir.config import ConfigError
from fgir.models.attention_maps import block_with_scores, check_plain_blocks


def test_a_block_run_step_by_step_equals_timms_and_its_scores_are_the_attention_logits():
    backbone = tiny_backbone()
    tokens = backbone.embed(torch.randn(2, 3, 32, 32))
    block = backbone.blocks[0]
    out, scores = block_with_scores(block, tokens)
    torch.testing.assert_close(out, block(tokens))
    hidden = block.norm1(tokens)
    q, k, _ = (hidden @ block.attn.qkv.weight.T + block.attn.qkv.bias).chunk(3, dim=-1)
    heads = block.attn.num_heads
    q, k = (x.reshape(2, -1, heads, x.shape[-1] // heads).transpose(1, 2) for x in (q, k))
    torch.testing.assert_close(scores, q @ k.transpose(-2, -1) / (q.shape[-1] ** 0.5))


def test_blocks_of_another_kind_are_refused_by_index():
    blocks = torch.nn.Sequential(*tiny_backbone().blocks, torch.nn.Identity())
    with pytest.raises(ConfigError, match="block 2 of tiny is a Identity"):
        check_plain_blocks(blocks, "tiny", "transfg")

"""A timm ViT block run step by step so that its attention scores come out with its tokens: the
part selection of TransFG (arXiv 2103.07976, Section 3.2) and FFVT's MAWS (arXiv 2107.02341,
Section 3.2) read them, and timm's fused attention never forms them."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Attention, Block

from fgir.errors import ConfigError


def check_plain_blocks(blocks, model_name: str, method: str) -> None:
    """Refuse blocks whose arithmetic `block_with_scores` does not reproduce (gated or parallel ones)."""
    for index, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if type(block) is not Block or type(attn) is not Attention or getattr(attn, "gate", None) is not None:
            raise ConfigError(f"method {method} reads the attention of timm's standard ViT block; block {index} "
                              f"of {model_name} is a {type(block).__name__}")


def attend(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's `Attention.forward` unfused: (output (B, S, D), scores before the softmax (B, H, S, S))."""
    batch, length, _ = x.shape
    q, k, v = attn.qkv(x).reshape(batch, length, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    mixed = attn.attn_drop(scores.softmax(dim=-1)) @ v
    out = attn.norm(mixed.transpose(1, 2).reshape(batch, length, -1))
    return attn.proj_drop(attn.proj(out)), scores


def block_with_scores(block: Block, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's `Block.forward`, also returning the attention scores before the softmax (B, H, S, S)."""
    update, scores = attend(block.attn, block.norm1(tokens))
    tokens = tokens + block.drop_path1(block.ls1(update))
    tokens = tokens + block.drop_path2(block.ls2(block.mlp(block.norm2(tokens))))
    return tokens, scores

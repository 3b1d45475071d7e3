"""The structure TransFG (arXiv 2103.07976) and FFVT (arXiv 2107.02341) share in the reference
implementations: the first L - 1 blocks of the backbone run on every token and expose their attention,
a selector picks tokens from them, and one new randomly initialised block (the reference's part layer
or aggregator, same width and heads as the backbone) runs on the CLS token plus the selected tokens;
the CLS token it outputs, normalised, feeds the head. The backbone's last block is never run."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block, init_weights_vit_timm
from torch import nn

from fgir.errors import ConfigError
from fgir.models.attention_maps import block_with_scores, check_plain_blocks
from fgir.models.backbone import Backbone
from fgir.models.checkpointing import run_block
from fgir.models.freezable import FreezableConfig, freeze_if_asked
from fgir.models.heads import LinearHead
from fgir.models.layers.attention_capture import BlockAttention, plain_layout
from fgir.models.peft.freezing import FrozenBackboneModel


def check_depth(method: str, depth: int | None, model_name: str) -> None:
    if depth is not None and depth < 2:
        raise ConfigError(f"method {method} replaces the last of at least 2 blocks; {model_name} has {depth}")


def fusion_block(backbone: Backbone) -> Block:
    """A new block shaped like the backbone's (width, heads, MLP width, qkv bias), timm-initialised."""
    last = backbone.blocks[-1]
    block = Block(backbone.embed_dim, last.attn.num_heads, mlp_ratio=last.mlp.fc1.out_features / backbone.embed_dim,
                  qkv_bias=last.attn.qkv.bias is not None)
    block.apply(init_weights_vit_timm)
    return block


class PartFusionClassifier(FrozenBackboneModel):
    """Subclasses define `select(layers, scores)`: the tokens leaving blocks 0..L-2 and those blocks'
    attention scores before the softmax (B, H, S, S) -> the tokens the fusion block runs on, CLS
    first. `norm` follows the fusion block (the backbone's final norm unless a subclass brings its own)."""

    method: str = ""
    selector: str = ""  # the selector's name for `fgir bench` (fgir.tools.selector_cost)

    def __init__(self, backbone: Backbone, num_classes: int, config: FreezableConfig, zero_init_head: bool = True,
                 norm: nn.Module | None = None):
        super().__init__()
        if not backbone.has_cls_token or backbone.num_prefix_tokens != 1:
            raise ConfigError(f"method {self.method} selects patches by their attention with the CLS token: "
                              f"{backbone.model_name} needs one CLS token and no register tokens")
        check_depth(self.method, backbone.num_blocks, backbone.model_name)
        check_plain_blocks(backbone.blocks, backbone.model_name, self.method)
        freeze_if_asked(backbone, config)
        self.backbone = backbone
        # Never run: frozen even in full fine-tuning, so no optimiser or DDP waits for its gradients.
        backbone.blocks[-1].requires_grad_(False)
        if norm is not None:
            backbone.norm.requires_grad_(False)
        self.fusion = fusion_block(backbone)
        self.fusion_norm = norm
        self.head = LinearHead(backbone.embed_dim, num_classes, zero_init=zero_init_head)

    def select(self, layers: list[torch.Tensor], scores: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def selector_shape(self) -> tuple[str, int, int, int, int]:
        """The selector reads the maps of blocks 0..L-2: (name, tokens, heads, L - 1, width)."""
        grid = self.backbone.grid_size
        return (self.selector, grid[0] * grid[1] + self.backbone.num_prefix_tokens,
                self.backbone.blocks[0].attn.num_heads, self.backbone.num_blocks - 1, self.backbone.embed_dim)

    def encode(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(the tokens leaving each of blocks 0..L-2, their attention scores before the softmax)."""
        tokens = self.backbone.embed(images)
        layers, scores = [], []
        for block in self.backbone.blocks[:-1]:
            tokens, layer_scores = run_block(self.backbone, block_with_scores, block, tokens)
            layers.append(tokens)
            scores.append(layer_scores)
        return layers, scores

    def attention_maps(self, images: torch.Tensor) -> list[BlockAttention]:
        """The softmax attention of blocks 0..L-2, which run on the patch grid; the fusion block runs
        on the selected tokens only and has no map over the grid."""
        layout = plain_layout(self.backbone, images)
        return [BlockAttention(scores.softmax(dim=-1).float(), *layout(index))
                for index, scores in enumerate(self.encode(images)[1])]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D): the fused CLS token after the norm, what the head reads."""
        fused = self.fusion(self.select(*self.encode(images)))
        norm = self.backbone.norm if self.fusion_norm is None else self.fusion_norm
        return norm(fused)[:, 0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """tokens (B, S, D), indices (B, K) -> (B, K, D)."""
    return tokens.gather(1, indices[..., None].expand(-1, -1, tokens.shape[-1]))

"""The ViT backbone that methods are built around: a timm VisionTransformer (composed, never forked)
with access to what methods need: the token embedding, the blocks to run with modules inserted
between them, every layer's tokens, the final norm, the patch size and the patch grid."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from timm.layers import DropPath
from timm.models import checkpoint
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from fgir.models.weights import create_vit

TokenFn = Callable[[torch.Tensor], torch.Tensor]


class Backbone(nn.Module):
    """Tokens are (B, prefix + N, D): the prefix is the CLS token (if any) then register tokens,
    followed by N patch tokens in row-major grid order."""

    def __init__(self, vit: VisionTransformer, model_name: str | None = None):
        super().__init__()
        if not isinstance(vit, VisionTransformer):
            raise TypeError(f"Backbone wraps a timm VisionTransformer, got {type(vit).__name__}")
        if vit.num_classes:
            raise ValueError(
                f"the ViT has a {vit.num_classes}-class head, but heads belong to methods: build it with "
                "num_classes=0 or call vit.reset_classifier(0)"
            )
        if not vit.global_pool:
            raise ValueError(
                "the ViT has global_pool='', so pool() could not reduce tokens; use 'token' or 'avg'"
            )
        self.vit = vit
        self.model_name = model_name or getattr(vit, "pretrained_cfg", {}).get(
            "architecture", type(vit).__name__
        )

    @classmethod
    def create(
        cls,
        name: str,
        *,
        pretrained: bool,
        weights: str | os.PathLike | None = None,
        img_size: int | tuple[int, int],
        drop_path_rate: float = 0.0,
        **timm_kwargs: Any,
    ) -> Backbone:
        """Build the timm ViT `name`; weights as in `fgir.models.weights.create_vit`."""
        vit = create_vit(
            name,
            pretrained=pretrained,
            weights=weights,
            img_size=img_size,
            drop_path_rate=drop_path_rate,
            **timm_kwargs,
        )
        return cls(vit, model_name=name)

    def set_uniform_drop_path(self, rate: float) -> None:
        """The same stochastic-depth rate in every block (timm builds a linear ramp 0 -> rate)."""
        for block in self.blocks:
            block.drop_path1 = DropPath(rate) if rate > 0 else nn.Identity()
            block.drop_path2 = DropPath(rate) if rate > 0 else nn.Identity()

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.vit.patch_embed.patch_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch rows and columns at the image size the model was built for."""
        return tuple(self.vit.patch_embed.grid_size)

    @property
    def num_prefix_tokens(self) -> int:
        return self.vit.num_prefix_tokens

    @property
    def has_cls_token(self) -> bool:
        return self.vit.has_class_token

    @property
    def num_blocks(self) -> int:
        return len(self.vit.blocks)

    @property
    def blocks(self) -> nn.Sequential:
        return self.vit.blocks

    @property
    def norm(self) -> nn.Module:
        """The norm after the last block (an Identity when timm normalises after pooling instead)."""
        return self.vit.norm

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """Patch rows and columns for an image of this size."""
        patch_embed = self.vit.patch_embed
        if patch_embed.strict_img_size and (height, width) != tuple(patch_embed.img_size):
            built = "x".join(map(str, patch_embed.img_size))
            raise ValueError(
                f"{self.model_name} takes {built} images only, not {height}x{width}; "
                "build it with dynamic_img_size=True for other sizes"
            )
        return tuple(patch_embed.dynamic_feat_size((height, width)))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> tokens entering block 0: patches, prefix tokens, position embedding."""
        tokens = self.vit.patch_embed(images)
        tokens = self.vit._pos_embed(tokens)
        tokens = self.vit.patch_drop(tokens)
        return self.vit.norm_pre(tokens)

    def run_blocks(
        self,
        tokens: torch.Tensor,
        start: int = 0,
        end: int | None = None,
        between: Mapping[int, TokenFn] | None = None,
    ) -> torch.Tensor:
        """Run blocks[start:end]; `between[i]` transforms the tokens right after block i (it may change
        the number of tokens, e.g. down-sample the patch grid)."""
        end = self.num_blocks if end is None else end
        if not 0 <= start <= end <= self.num_blocks:
            raise ValueError(
                f"blocks [{start}:{end}] outside the {self.num_blocks} blocks of {self.model_name}"
            )
        between = between or {}
        self._check_block_indices(between, "between")
        for index in range(start, end):
            block = self.vit.blocks[index]
            tokens = checkpoint(block, tokens) if self.vit.grad_checkpointing else block(tokens)
            if index in between:
                tokens = between[index](tokens)
        return tokens

    def forward_tokens(
        self,
        images: torch.Tensor,
        *,
        return_layers: Sequence[int] = (),
        between: Mapping[int, TokenFn] | None = None,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """(tokens after the final norm, {i: tokens after block i}). Layer i's tokens are what block
        i + 1 receives: with `between`, they include the module inserted after block i."""
        self._check_block_indices(return_layers, "return_layers")
        tokens = self.embed(images)
        layers = {}
        start = 0
        for index in sorted(set(return_layers)):
            tokens = self.run_blocks(tokens, start, index + 1, between)
            layers[index] = tokens
            start = index + 1
        tokens = self.run_blocks(tokens, start, None, between)
        return self.norm(tokens), layers

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens after the final norm, (B, prefix + N, D); equals timm's `vit.forward_features`."""
        return self.forward_tokens(images)[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, D) image feature as timm's head sees it: the CLS token ('token'), or the mean of the patch
        tokens, registers excluded ('avg'), per the model's global_pool, then timm's fc_norm if any."""
        return self.vit.fc_norm(self.vit.pool(tokens))

    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D): the tokens without CLS and register tokens."""
        return tokens[:, self.num_prefix_tokens :]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        self.vit.set_grad_checkpointing(enable)

    def _check_block_indices(self, indices: Iterable[int], argument: str) -> None:
        wrong = [index for index in indices if not 0 <= index < self.num_blocks]
        if wrong:
            raise ValueError(
                f"{argument}: block indices {wrong} outside 0..{self.num_blocks - 1} of {self.model_name}"
            )

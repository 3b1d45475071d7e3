"""RAMS-Trans (Hu et al., ACM MM 2021, arXiv 2107.08192; method `ramstrans`) as the ILA paper's
reference code runs it (arXiv 2409.11051, Table 1: a frozen-backbone row whose trainable
parameters are the heads):

- Region (Section 3): the softmax attention of every block of the first pass is rolled out
  (heads averaged, identity added for the residual path, rows renormalised, blocks multiplied first
  to last; `fgir.models.layers.attention_rollout`); the CLS row of the result scores the patches.
  The paper's dynamic patch proposal module turns this map into a patch mask and boxes it; the
  reference code, followed here, boxes the `top_k` (8) highest-scoring patches, with GLSim's box and
  crop arithmetic (`fgir.models.gls`; `box=reference` reproduces the reference code's rounding and
  align-corners resize). The selection is not differentiable.
- The crop, resized to the input size, is re-encoded by the same ViT with its own CLS token,
  initialised from the pretrained one (the paper's CLS token per scale, Fig. 2).
- One linear head reads both CLS tokens and their logits are averaged; no aggregator block, one
  cross-entropy on the averaged logits (the reference's `avg_cls` classifier, two scales).
- Frozen backbone by default (the ILA table); `frozen=false` fine-tunes every weight. Frozen, the
  crop CLS token trains with the image's (`model.ramstrans.train_cls_token`), as in the reference,
  whose freezing keeps every parameter named `*class_token` trainable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fgir.config import ModelConfig
from fgir.errors import ConfigError
from fgir.methods import register_method
from fgir.methods.capabilities import Explanation
from fgir.models.attention_maps import block_with_scores, check_plain_blocks
from fgir.models.backbone import Backbone
from fgir.models.checkpointing import run_block
from fgir.models.freezable import FreezableConfig, freeze_if_asked
from fgir.models.gls import (
    BOX_MODES,
    boxes_from_indices,
    check_selected_count,
    crop_and_resize,
    embed_with_cls,
)
from fgir.models.glsim import GLSimOutput
from fgir.models.heads import LinearHead
from fgir.models.layers.attention_rollout import attention_rollout, rollout_flops
from fgir.models.peft.freezing import FrozenBackboneModel


@dataclass
class RAMSTransConfig(FreezableConfig):
    """RAMS-Trans (arXiv 2107.08192): attention-rollout crop re-encoded by the same ViT, both CLS
    tokens' logits averaged; frozen backbone by default (the ILA paper's table)."""

    section: ClassVar[str] = "ramstrans"
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"box": BOX_MODES}
    POSITIVE: ClassVar[tuple[str, ...]] = ("top_k",)

    frozen: bool = True  # True: frozen backbone, the ILA table's setting; False: full fine-tuning
    top_k: int = 8  # patches with the largest rolled-out CLS attention; the box is drawn around them
    box: str = "inclusive"  # inclusive (covers the last selected patch) | reference (the ILA code's rounding, resize)


def rollout_selection_flops(tokens: int, blocks: int, heads: int, crop_size: tuple[int, int],
                            channels: int = 3) -> int:
    """FLOPs of the rollout selection for one image: the rollout over L blocks of S tokens and H heads
    (`rollout_flops`) and the crop's bilinear resize, 8 * C * H * W (4 multiply-adds per output
    value). The top-k and the box are comparisons, not FLOPs."""
    return rollout_flops(tokens, heads, blocks) + 8 * channels * crop_size[0] * crop_size[1]


class RAMSTrans(FrozenBackboneModel):
    score_name = "rolled-out CLS attention"  # the title of its score map in `fgir explain` and `fgir serve`

    def __init__(self, backbone: Backbone, num_classes: int, config: RAMSTransConfig, zero_init_head: bool = True):
        super().__init__()
        if not backbone.has_cls_token:
            raise ConfigError(f"method ramstrans scores patches by the rolled-out attention of the CLS token: "
                              f"{backbone.model_name} has none")
        check_plain_blocks(backbone.blocks, backbone.model_name, "ramstrans")
        freeze_if_asked(backbone, config)
        self.backbone = backbone
        self.config = config
        self.crop_cls = nn.Parameter(backbone.vit.cls_token.detach().clone(),
                                     requires_grad=not config.frozen or config.train_cls_token)
        self.head = LinearHead(backbone.embed_dim, num_classes, zero_init=zero_init_head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_details(images).logits

    def forward_details(self, images: torch.Tensor) -> GLSimOutput:
        """Averaged logits plus the selection (rollout scores, top-k indices, boxes, crops)."""
        tokens, probabilities = self.first_pass(images)
        scores, indices, boxes, crops = self.select(images, probabilities)
        crop_tokens = self.backbone.norm(self.backbone.run_blocks(embed_with_cls(self.backbone, crops, self.crop_cls)))
        both = torch.stack([tokens[:, 0], crop_tokens[:, 0]], dim=1)
        return GLSimOutput(self.head(both).mean(1), scores, indices, boxes, crops)

    def first_pass(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(tokens after the final norm, each block's softmax attention (B, H, S, S) in float32, without
        gradient). The blocks run unfused to give their scores; the softmax is taken again from them."""
        tokens = self.backbone.embed(images)
        probabilities = []
        for block in self.backbone.blocks:
            tokens, scores = run_block(self.backbone, block_with_scores, block, tokens)
            probabilities.append(scores.detach().float().softmax(dim=-1))
        return self.backbone.norm(tokens), probabilities

    def selection_input(self, images: torch.Tensor) -> list[torch.Tensor]:
        """What `select` reads from the first pass: each block's softmax attention."""
        return self.first_pass(images)[1]

    @torch.no_grad()
    def select(
        self, images: torch.Tensor, probabilities: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The step between the two passes: (rolled-out CLS attention per patch (B, N), the top-k
        patch indices, the pixel boxes around them, the crops resized to the input size)."""
        height, width = images.shape[-2:]
        with torch.autocast(images.device.type, enabled=False):  # the products in float32 under mixed precision
            scores = attention_rollout(probabilities)[:, 0, self.backbone.num_prefix_tokens:]
        if self.config.top_k > scores.shape[1]:
            raise ValueError(f"model.ramstrans.top_k={self.config.top_k} exceeds the {scores.shape[1]} patches "
                             f"of a {height}x{width} image")
        indices = scores.topk(self.config.top_k, dim=1).indices
        grid = self.backbone.grid_for(height, width)
        boxes = boxes_from_indices(indices, grid, self.backbone.patch_size, (height, width), self.config.box)
        crops = crop_and_resize(images, boxes, align_corners=self.config.box == "reference")
        return scores, indices, boxes, crops

    def explain(self, images: torch.Tensor) -> Explanation:
        """The rollout scores, the box around the top-k patches and its crop."""
        output = self.forward_details(images)
        return Explanation(output.logits, output.scores, output.boxes, output.crops, selected=self.config.top_k,
                           score_name=self.score_name)

    def selector_shape(self) -> tuple[str, int, int, int, int]:
        """The rollout reads the maps of all L blocks: ("rollout", tokens, heads, L, width)."""
        grid = self.backbone.grid_size
        return ("rollout", grid[0] * grid[1] + self.backbone.num_prefix_tokens,
                self.backbone.blocks[0].attn.num_heads, self.backbone.num_blocks, self.backbone.embed_dim)

    def selection_flops(self, image_size: tuple[int, int]) -> int:
        """FLOPs of the selection step for one image (`rollout_selection_flops`)."""
        grid = self.backbone.grid_for(*image_size)
        tokens = self.backbone.num_prefix_tokens + grid[0] * grid[1]
        heads = self.backbone.blocks[0].attn.num_heads
        return rollout_selection_flops(tokens, self.backbone.num_blocks, heads, image_size)


def build_ramstrans(backbone: Backbone, num_classes: int, model: ModelConfig) -> RAMSTrans:
    return RAMSTrans(backbone, num_classes, model.ramstrans, zero_init_head=model.zero_init_head)


def check_ramstrans(config, facts) -> None:
    """The top-k selection needs at least k patches at the training image size."""
    check_selected_count("model.ramstrans.top_k", config.model.ramstrans.top_k, facts, config.data.image_size)


register_method("ramstrans", build=build_ramstrans, config=RAMSTransConfig, check=check_ramstrans)

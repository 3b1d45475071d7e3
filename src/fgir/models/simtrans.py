"""SIM-Trans (Sun et al., ACM MM 2022, arXiv 2208.14607, Section 3; method `simtrans`), as the ILA
paper's reference code runs it (arXiv 2409.11051, Table 1, row SIM-Trans*):

- Structure information learning (the SIL module), in each of the last `levels` blocks (3): the CLS
  row of the block's softmax attention, averaged over the heads, gives a weight per patch; patches
  above the mean weight are kept (a mask), the kept patch of largest weight is the anchor. Each
  patch's polar coordinates relative to the anchor (grid offsets divided by the grid's row count;
  the angle mapped from (-pi, pi] to (0, 1]; both zero outside the mask) are the node
  features of a graph whose adjacency is the outer product of the masked weights. A two-layer graph
  convolution (2 -> 512 -> D, no bias, LeakyReLU 0.2 and dropout after each, ReLU between; one
  module shared by the levels) gives the anchor node a structure feature, added to the CLS token,
  which the next block receives.
- Multi-level feature boosting (the MFB module): the CLS tokens after those levels, each through the
  backbone's final norm, are concatenated; the head is BatchNorm, Linear (-> 1024), BatchNorm, ELU,
  Linear. The last level's block is a new randomly initialised one, as the reference's weight loader
  leaves it (it loads no module named `part*`); the backbone's last block is never run.
- Cross-entropy only in the ILA reference, which defines the paper's contrastive loss but never
  calls it; the authors' code adds it with weight 1 (`contrastive_weight`) on the last level's
  normalised CLS features f: over pairs of the same class 1 - cos(f_i, f_j); over pairs of different
  classes 1 + cos(f_i, f_j) where their distance (1 - cos) / 2 is at most the margin (0.3) plus
  the mean distance of i to the other samples of its class; divided by B^2.

The adjacency is rank one, A = w w^T, so A V is computed as w (w^T V); the reference's dropout
between the two graph layers stays on in evaluation (a functional call), here it follows `train()`.
The reference also builds modules its forward never uses (two structure heads, a linear layer and
a structure token, 10,184,144 parameters at ViT-B/16); they are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fgir.config import ModelConfig
from fgir.errors import ConfigError
from fgir.methods import register_method
from fgir.models.attention_maps import block_with_scores, check_plain_blocks
from fgir.models.backbone import Backbone
from fgir.models.checkpointing import run_block
from fgir.models.freezable import FreezableConfig, freeze_if_asked
from fgir.models.heads import LinearHead
from fgir.models.part_fusion import check_depth, fusion_block
from fgir.models.peft.freezing import FrozenBackboneModel

LEAKY_SLOPE = 0.2


@dataclass
class SIMTransConfig(FreezableConfig):
    """SIM-Trans (arXiv 2208.14607): structure information of the most attended patches added to CLS
    in the last blocks, their CLS tokens fused by the head; full fine-tuning by default (the ILA
    table's SIM-Trans*), frozen for the parameter-efficient setting."""

    section: ClassVar[str] = "simtrans"
    POSITIVE: ClassVar[tuple[str, ...]] = ("levels", "graph_width", "head_width")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("contrastive_weight",)
    FRACTIONS: ClassVar[tuple[str, ...]] = ("graph_dropout", "contrastive_margin")

    frozen: bool = False  # True: frozen backbone; False: full fine-tuning (the ILA table's *)
    levels: int = 3  # the last blocks that add structure to CLS and feed the head, the new last block included
    graph_width: int = 512  # hidden width of the two-layer graph convolution
    graph_dropout: float = 0.1  # dropout after each graph layer and between them
    head_width: int = 1024  # hidden width of the boosting head
    contrastive_weight: float = 0.0  # 0: cross-entropy only (the ILA reference); 1: the authors' code
    contrastive_margin: float = 0.3  # other classes cost within this much beyond the mean same-class distance


def polar_graph(weights: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N) attention of CLS to the patches (heads averaged) -> (node features (B, N, 2): distance and
    angle to the anchor, masked; node weights (B, N): the masked attention, A = w w^T; anchor (B,))."""
    kept = weights > weights.mean(dim=1, keepdim=True)
    node_weights = weights * kept
    anchor = node_weights.argmax(dim=1)
    rows, cols = grid
    position = torch.arange(rows * cols, device=weights.device)
    row, col = (position // cols).to(weights.dtype), (position % cols).to(weights.dtype)
    d_row = (row[None] - row[anchor][:, None]) / rows
    d_col = (col[None] - col[anchor][:, None]) / rows
    distance = torch.sqrt(d_row**2 + d_col**2)
    # atan2(+0, x < 0) is pi; the ONNX export of atan2 gives -pi there, so that ray is set explicitly.
    radians = torch.where((d_col == 0) & (d_row < 0), math.pi, torch.atan2(d_col, d_row))
    angle = (radians / math.pi + 1) / 2
    return torch.stack([distance, angle], dim=-1) * kept[..., None], node_weights, anchor


def propagate(node_weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A V for the adjacency A = w w^T of each sample: (B, N), (B, N, F) -> (B, N, F)."""
    return node_weights[..., None] * (node_weights[:, None] @ values)


class StructureGraph(nn.Module):
    """The two-layer graph convolution over the polar node features; returns the anchor node's output."""

    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.first = nn.Parameter(torch.empty(2, hidden))
        self.second = nn.Parameter(torch.empty(hidden, width))
        for weight in (self.first, self.second):
            bound = 1 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor, node_weights: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        """(B, N, 2), (B, N), (B,) -> (B, width)."""
        hidden = self.dropout(F.leaky_relu(propagate(node_weights, features @ self.first), LEAKY_SLOPE))
        hidden = self.dropout(hidden.relu())
        # Row `anchor` of A (H W2) = w_anchor (w^T H) W2: only the anchor's output is used.
        pooled = (node_weights[:, None] @ hidden)[:, 0] @ self.second
        at_anchor = node_weights.gather(1, anchor[:, None]) * pooled
        return self.dropout(F.leaky_relu(at_anchor, LEAKY_SLOPE))


class BoostingHead(nn.Sequential):
    """BatchNorm, Linear (-> hidden), BatchNorm, ELU, then the classifier."""

    def __init__(self, features: int, hidden: int, num_classes: int, zero_init: bool):
        super().__init__(nn.BatchNorm1d(features), nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ELU(),
                         LinearHead(hidden, num_classes, zero_init=zero_init))


def contrastive_loss(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """SIM-Trans's contrastive loss over a batch of features (B, D) with class indices (B,)."""
    unit = F.normalize(features.float(), dim=-1)
    cosine = unit @ unit.T
    distance = (1 - cosine) / 2
    same = labels[:, None] == labels[None, :]
    others = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    mean_same = (distance * others).sum(1) / (others.sum(1) + 1e-6)
    hard = ~same & (distance <= margin + mean_same[:, None])
    cost = torch.where(same, 1 - cosine, torch.where(hard, 1 + cosine, torch.zeros_like(cosine)))
    return cost.sum() / labels.shape[0] ** 2


def check_levels(levels: int, depth: int | None) -> None:
    if depth is not None and levels > depth:
        raise ConfigError(f"model.simtrans.levels={levels} is more than the {depth} blocks of the backbone")


class SIMTrans(FrozenBackboneModel):
    def __init__(self, backbone: Backbone, num_classes: int, config: SIMTransConfig, zero_init_head: bool = True):
        super().__init__()
        if not backbone.has_cls_token or backbone.num_prefix_tokens != 1:
            raise ConfigError(f"method simtrans reads the attention of the CLS token: {backbone.model_name} "
                              "needs one CLS token and no register tokens")
        check_depth("simtrans", backbone.num_blocks, backbone.model_name)
        check_levels(config.levels, backbone.num_blocks)
        check_plain_blocks(backbone.blocks, backbone.model_name, "simtrans")
        freeze_if_asked(backbone, config)
        self.backbone = backbone
        # Never run: frozen even in full fine-tuning, so no optimiser or DDP waits for its gradients.
        backbone.blocks[-1].requires_grad_(False)
        self.last_block = fusion_block(backbone)
        self.structure = StructureGraph(backbone.embed_dim, config.graph_width, config.graph_dropout)
        self.head = BoostingHead(config.levels * backbone.embed_dim, config.head_width, num_classes, zero_init_head)
        self.config = config
        self._last_cls: torch.Tensor | None = None

    def add_structure(self, tokens: torch.Tensor, probabilities: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Tokens (B, S, D) and their block's softmax attention (B, H, S, S) -> the tokens, structure added to CLS."""
        features, node_weights, anchor = polar_graph(probabilities[:, :, 0, 1:].mean(dim=1), grid)
        structure = self.structure(features, node_weights, anchor)
        return torch.cat([tokens[:, :1] + structure[:, None], tokens[:, 1:]], dim=1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, levels D): the normalised CLS token after each of the last `levels` blocks, first to last."""
        grid = self.backbone.grid_for(*images.shape[-2:])
        blocks = [*self.backbone.blocks[:-1], self.last_block]
        first = len(blocks) - self.config.levels
        tokens, levels = self.backbone.embed(images), []
        for index, block in enumerate(blocks):
            if index < first:
                tokens = run_block(self.backbone, block, tokens)
                continue
            tokens, scores = run_block(self.backbone, block_with_scores, block, tokens)
            tokens = self.add_structure(tokens, scores.softmax(dim=-1), grid)
            levels.append(self.backbone.norm(tokens[:, 0]))
        return torch.cat(levels, dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)
        keep = self.training and self.config.contrastive_weight
        self._last_cls = features[:, -self.backbone.embed_dim:] if keep else None
        return self.head(features)

    def extra_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """The weighted contrastive loss of the last training forward's final CLS features (None otherwise)."""
        if self._last_cls is None:
            return None
        labels = targets.argmax(dim=1) if targets.ndim == 2 else targets
        return self.config.contrastive_weight * contrastive_loss(self._last_cls, labels, self.config.contrastive_margin)


def build_simtrans(backbone: Backbone, num_classes: int, model: ModelConfig) -> SIMTrans:
    return SIMTrans(backbone, num_classes, model.simtrans, zero_init_head=model.zero_init_head)


def check_simtrans(config, facts) -> None:
    """Depth and levels against the backbone, before any work."""
    check_depth("simtrans", facts.depth, config.model.backbone)
    check_levels(config.model.simtrans.levels, facts.depth)


register_method("simtrans", build=build_simtrans, config=SIMTransConfig, check=check_simtrans)

"""GLSim (Rios et al., arXiv 2407.12891, Section 3): encode the image, select the patches most similar to the global token (GLS),
crop their bounding box, re-encode the crop with the SAME encoder, fuse both global tokens with one
transformer block and classify."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fgir.config import ModelConfig
from fgir.config_fields import MethodSection
from fgir.methods import register_method
from fgir.methods.capabilities import Explanation
from fgir.models.backbone import Backbone
from fgir.models.gls import (
    BOX_MODES,
    SIMILARITIES,
    boxes_from_indices,
    check_selected_count,
    crop_and_resize,
    embed_with_cls,
    gls_scores,
    selection_flops,
)
from fgir.models.heads import LinearHead
from fgir.models.layers.aggregator import Aggregator


@dataclass
class GLSimConfig(MethodSection):
    """GLSim (arXiv 2407.12891, Section 3): global-local similarity crop, shared re-encoding, aggregator."""

    section: ClassVar[str] = "glsim"
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "similarity": SIMILARITIES, "box": BOX_MODES, "crop_cls": ("separate", "shared"),
        "selection": ("crop", "tokens"), "head": ("token", "avg", "max"),
    }
    POSITIVE: ClassVar[tuple[str, ...]] = ("top_o",)

    top_o: int = 8  # patches selected by similarity (16 for Stanford Dogs in the paper)
    similarity: str = "cosine"  # cosine | l1 | l2 (for distances the smallest wins)
    box: str = "inclusive"  # inclusive (ours) | reference (the paper code's rounding, for its checkpoints)
    crop_cls: str = "separate"  # separate: own crop CLS initialised from the pretrained one | shared
    selection: str = "crop"  # crop: crop + second pass | tokens: gather the top-O tokens, no second pass
    head: str = "token"  # token: image CLS position | avg | max of both tokens' logits
    test_flip: bool = False  # average the logits of the image and its horizontal flip at test time


@dataclass
class GLSimOutput:
    """Everything a visualisation needs; the training contract only uses `logits`."""

    logits: torch.Tensor  # (B, classes)
    scores: torch.Tensor  # (B, N) GLS score per patch, row-major over the patch grid; higher = selected
    indices: torch.Tensor  # (B, O) selected patch indices
    boxes: torch.Tensor  # (B, 4) pixel x0, y0, x1, y1 around the selected patches (x1, y1 exclusive)
    crops: torch.Tensor | None  # (B, C, H, W) resized crops; None for selection='tokens'

    def first(self, count: int) -> GLSimOutput:
        """The first `count` samples of every field."""
        crops = None if self.crops is None else self.crops[:count]
        return GLSimOutput(
            self.logits[:count], self.scores[:count], self.indices[:count], self.boxes[:count], crops
        )


class GLSim(nn.Module):
    def __init__(
        self, backbone: Backbone, num_classes: int, config: GLSimConfig, zero_init_head: bool = True,
        aggregator_drop_path: float = 0.0,
    ):
        super().__init__()
        self.backbone = backbone
        self.config = config
        # The crop's own CLS token only exists when there is a crop pass to use it (an unused
        # parameter would break DDP).
        self.crop_cls: nn.Parameter | None = None
        if config.selection == "crop" and config.crop_cls == "separate":
            if not backbone.has_cls_token:
                raise ValueError(
                    f"model.glsim.crop_cls='separate' needs a CLS token, but {backbone.model_name} has "
                    "none; use crop_cls='shared' (the mean patch token is then the global token)"
                )
            self.crop_cls = nn.Parameter(backbone.vit.cls_token.detach().clone())
        self.aggregator = Aggregator(backbone.embed_dim, drop_path=aggregator_drop_path)
        self.head = LinearHead(backbone.embed_dim, num_classes, zero_init=zero_init_head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_details(images).logits

    def explain(self, images: torch.Tensor) -> Explanation:
        """The GLS scores, the box around the top-O patches and its crop (arXiv 2407.12891, Fig. 1)."""
        output = self.forward_details(images)
        return Explanation(output.logits, output.scores, output.boxes, output.crops, selected=self.config.top_o)

    def selection_input(self, images: torch.Tensor) -> torch.Tensor:
        """What `select` reads from the first pass: the tokens after the final norm."""
        return self.backbone.forward_features(images)

    def selector_shape(self) -> tuple[str, int, int, int, int]:
        """GLS compares the last layer's CLS with every patch: ("gls", tokens, heads, 1, width)."""
        grid = self.backbone.grid_size
        return ("gls", grid[0] * grid[1] + self.backbone.num_prefix_tokens, self.backbone.blocks[0].attn.num_heads,
                1, self.backbone.embed_dim)

    def selection_flops(self, image_size: tuple[int, int]) -> int:
        """FLOPs of the selection step for one image (`fgir.models.gls.selection_flops`)."""
        patches = self.backbone.grid_for(*image_size)
        return selection_flops(patches[0] * patches[1], self.backbone.embed_dim, self.config.similarity, image_size)

    def forward_details(self, images: torch.Tensor) -> GLSimOutput:
        """Logits plus the selection; with test_flip in eval mode the logits average the image and
        its horizontal flip (one batched pass), the rest describes the unflipped image."""
        if not (self.config.test_flip and not self.training):
            return self._forward_once(images)
        both = self._forward_once(torch.cat([images, images.flip(-1)]))
        count = images.shape[0]
        output = both.first(count)
        output.logits = (both.logits[:count] + both.logits[count:]) / 2
        return output

    def _forward_once(self, images: torch.Tensor) -> GLSimOutput:
        tokens = self.backbone.forward_features(images)
        global_token = self._global_token(tokens)
        scores, indices, boxes, crops = self.select(images, tokens)
        if crops is not None:
            crop_global = self._global_token(self._encode_crop(crops))
            fused = torch.stack([global_token, crop_global], dim=1)
        else:
            patches = self.backbone.patch_tokens(tokens)
            selected = patches.gather(1, indices.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
            fused = torch.cat([global_token.unsqueeze(1), selected], dim=1)
        logits = self._classify(self.aggregator(fused))
        return GLSimOutput(logits, scores, indices, boxes, crops)

    @torch.no_grad()  # selection is not differentiable: no gradient through the box choice
    def select(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The step GLSim adds between its two encoder passes: (GLS scores, top-O patch indices,
        boxes, crops resized to the input size; crops is None for selection='tokens'). `tokens`
        are the first pass's output for `images`."""
        height, width = images.shape[-2:]
        patches = self.backbone.patch_tokens(tokens)
        if self.config.top_o > patches.shape[1]:
            raise ValueError(
                f"model.glsim.top_o={self.config.top_o} exceeds the {patches.shape[1]} patches of a "
                f"{height}x{width} image"
            )
        scores = gls_scores(self._global_token(tokens), patches, self.config.similarity)
        indices = scores.topk(self.config.top_o, dim=1).indices
        grid = self.backbone.grid_for(height, width)
        boxes = boxes_from_indices(indices, grid, self.backbone.patch_size, (height, width), self.config.box)
        if self.config.selection != "crop":
            return scores, indices, boxes, None
        # `reference` reproduces the paper code's crop arithmetic whole: its box and its resize.
        crops = crop_and_resize(images, boxes, align_corners=self.config.box == "reference")
        return scores, indices, boxes, crops

    def _global_token(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, D): the CLS token, or the mean patch token for backbones without one."""
        if self.backbone.has_cls_token:
            return tokens[:, 0]
        return self.backbone.patch_tokens(tokens).mean(1)

    def _encode_crop(self, crops: torch.Tensor) -> torch.Tensor:
        """Second pass through the shared encoder, with the crop's own CLS token if it has one."""
        if self.crop_cls is None:
            return self.backbone.forward_features(crops)
        tokens = self.embed_with_crop_cls(crops)
        return self.backbone.norm(self.backbone.run_blocks(tokens))

    def embed_with_crop_cls(self, crops: torch.Tensor) -> torch.Tensor:
        """Backbone.embed with the crop CLS token in the CLS slot (`fgir.models.gls.embed_with_cls`)."""
        return embed_with_cls(self.backbone, crops, self.crop_cls)

    def _classify(self, fused: torch.Tensor) -> torch.Tensor:
        if self.config.head == "token":
            return self.head(fused[:, 0])
        logits = self.head(fused)
        return logits.mean(1) if self.config.head == "avg" else logits.amax(1)


def build_glsim(backbone: Backbone, num_classes: int, model: ModelConfig) -> GLSim:
    # The reference code's aggregator block has the encoder's constant drop-path rate.
    uniform = model.drop_path if model.drop_path_layout == "uniform" else 0.0
    return GLSim(backbone, num_classes, model.glsim, zero_init_head=model.zero_init_head, aggregator_drop_path=uniform)


def check_glsim(config, facts) -> None:
    """The top-O selection needs at least O patches at the training image size."""
    check_selected_count("model.glsim.top_o", config.model.glsim.top_o, facts, config.data.image_size)


register_method("glsim", build=build_glsim, config=GLSimConfig, check=check_glsim)

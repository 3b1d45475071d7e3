"""The CAL model around a feature extractor: training passes, losses and the test-time procedure."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fgir.models.backbone import Backbone
from fgir.models.cal.augment import attention_crop, attention_drop, pick_two_maps, uniform
from fgir.models.cal.config import CALConfig, CALViTConfig
from fgir.models.cal.head import CounterfactualHead, HeadOutput, centre_loss, step_centres
from fgir.models.freezable import freeze_if_asked
from fgir.models.peft.freezing import FrozenBackboneModel

# The reference's loss: CE(raw) / 3 + CE(crops and drops) * 2 / 3 + CE(effects of all three) + centre.
RAW_WEIGHT = 1 / 3
AUGMENTED_WEIGHT = 2 / 3
EFFECT_WEIGHT = 1.0
# Test-time crops of the reference: (fraction of the mean map's maximum, padding fraction).
TEST_CROPS = ((0.3, 0.1), (0.2, 0.1), (0.1, 0.05))
SINGLE_CROP = (0.1, 0.05)


@dataclass
class TrainingPass:
    raw: HeadOutput  # the images
    augmented: HeadOutput  # their attention crops then their attention drops, in one pass


class CounterfactualAttention(nn.Module):
    """Subclasses give `feature_maps(images) -> (B, C, H, W)` and call `add_head`."""

    def add_head(self, config: CALConfig, channels: int, num_classes: int, zero_init_head: bool) -> None:
        """The head on `channels`-channel feature maps and the class centres of its features."""
        self.config = config
        self.head = CounterfactualHead(channels, config.attention_maps, num_classes, config.logit_scale,
                                       zero_init_head)
        # A buffer, so checkpoints and resumed runs keep the centres (the reference keeps them on
        # the side, lost between runs). Under DDP, buffers are broadcast from rank 0 at each forward:
        # every process uses rank 0's centres (the reference keeps one set per process).
        self.register_buffer("centres", torch.zeros(num_classes, config.attention_maps * channels))
        self._last: TrainingPass | None = None

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, images: torch.Tensor) -> HeadOutput:
        return self.head(self.feature_maps(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Training: the raw logits (what the engine's cross-entropy scores); the pass over the attention
        crops and drops runs too and is kept for `extra_loss`. Evaluation: `test_time_logits`."""
        if not self.training:
            self._last = None
            return self.test_time_logits(images)
        raw = self.encode(images)
        count = images.shape[0]
        with torch.no_grad():
            maps = pick_two_maps(raw.attention)
            crops = attention_crop(images, maps[:, :1], uniform(*self.config.crop_theta, count),
                                   self.config.crop_padding)
            drops = attention_drop(images, maps[:, 1:], uniform(*self.config.drop_theta, count))
        self._last = TrainingPass(raw, self.encode(torch.cat([crops, drops])))
        return raw.logits

    def extra_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """What the reference's loss adds to the engine's cross-entropy of the raw logits, once per
        training forward (None otherwise): (1/3 - 1) CE(raw), so the raw image counts 1/3 in all (exact
        with train.label_smoothing=0 and no class weights), + 2/3 CE(crops and drops) + CE(effects of
        raw, crops and drops) + centre_weight * centre loss. Cross-entropies take the targets as
        they are (mixed ones too, which is the reference's mixup criterion); the centres follow each
        sample's dominant class. Also steps the class centres."""
        if self._last is None:
            return None
        raw, augmented = self._last.raw, self._last.augmented
        self._last = None
        twice = torch.cat([targets, targets])
        loss = ((RAW_WEIGHT - 1) * F.cross_entropy(raw.logits.float(), targets)
                + AUGMENTED_WEIGHT * F.cross_entropy(augmented.logits.float(), twice)
                + EFFECT_WEIGHT * F.cross_entropy(torch.cat([raw.effect, augmented.effect]).float(),
                                                  torch.cat([targets, twice])))
        labels = targets.argmax(dim=1) if targets.ndim == 2 else targets
        batch_centres = step_centres(self.centres, raw.features, labels, self.config.beta)
        return loss + self.config.centre_weight * centre_loss(raw.features.float(), batch_centres)

    def test_time_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The reference's test (`model.<section>.test_time`): crops_flip averages, on the image and on
        its horizontal mirror, the raw logits and those of three crops around the mean attention map
        (thresholds 0.3, 0.2, 0.1 of its maximum, padding 0.1, 0.1, 0.05), then the two; single_crop
        averages the raw logits and one crop's (0.1, padding 0.05); raw is the raw logits."""
        first = self.encode(images)
        if self.config.test_time == "raw":
            return first.logits
        if self.config.test_time == "single_crop":
            return (first.logits + self.crop_logits(images, first, *SINGLE_CROP)) / 2
        mirrored = images.flip(3)
        return (self.multi_crop(images, first) + self.multi_crop(mirrored, self.encode(mirrored))) / 2

    def crop_logits(self, images: torch.Tensor, output: HeadOutput, fraction: float, padding: float) -> torch.Tensor:
        mean_map = output.attention.mean(dim=1, keepdim=True)
        return self.encode(attention_crop(images, mean_map, fraction, padding)).logits

    def multi_crop(self, images: torch.Tensor, output: HeadOutput) -> torch.Tensor:
        logits = [output.logits] + [self.crop_logits(images, output, *crop) for crop in TEST_CROPS]
        return sum(logits) / len(logits)


def drop_class_token(backbone: Backbone) -> None:
    """Remove the ViT's CLS token and its position embedding, as the reference's CAL ViT (built without
    a class token, its pretrained patch position embeddings kept) runs: the blocks see patches only."""
    vit = backbone.vit
    if vit.cls_token is None:
        return
    if not vit.no_embed_class:
        vit.pos_embed = nn.Parameter(vit.pos_embed.detach()[:, 1:].clone())
    vit.cls_token = None
    vit.num_prefix_tokens -= 1
    vit.has_class_token = False
    vit.global_pool = "avg"


class CALViT(FrozenBackboneModel, CounterfactualAttention):
    """CAL on the patch tokens of a ViT after its final norm, as a (B, D, rows, columns) grid."""

    def __init__(self, backbone: Backbone, num_classes: int, config: CALViTConfig, zero_init_head: bool = False):
        super().__init__()
        drop_class_token(backbone)
        freeze_if_asked(backbone, config)
        self.backbone = backbone
        self.add_head(config, backbone.embed_dim, num_classes, zero_init_head)

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.patch_tokens(self.backbone.forward_features(images))
        rows, columns = self.backbone.grid_for(*images.shape[-2:])
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, rows, columns)


class CALCNN(CounterfactualAttention):
    """CAL on the last feature map of a timm CNN (`forward_features`), fine-tuned whole."""

    def __init__(self, network: nn.Module, num_classes: int, config: CALConfig, zero_init_head: bool = False):
        super().__init__()
        self.network = network
        self.add_head(config, network.num_features, num_classes, zero_init_head)

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.forward_features(images)

"""The config sections of CAL (arXiv 2108.08728): `model.cal_cnn` for a timm CNN, `model.cal` for a ViT
(the same keys and the frozen-backbone ones). Defaults are the reference code's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from fgir.config_fields import MethodSection
from fgir.errors import ConfigError
from fgir.models.freezable import FreezableConfig

TEST_TIMES = ("crops_flip", "single_crop", "raw")


@dataclass
class CALConfig(MethodSection):
    """CAL on a timm CNN (ResNet-101 in the GLSim paper's Table 4, arXiv 2407.12891), fine-tuned whole."""

    section: ClassVar[str] = "cal_cnn"
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"test_time": TEST_TIMES}
    POSITIVE: ClassVar[tuple[str, ...]] = ("attention_maps", "logit_scale")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("beta", "centre_weight", "crop_padding")
    RANGES: ClassVar[tuple[str, ...]] = ("crop_theta", "drop_theta")

    attention_maps: int = 32  # M, the WS-DAN attention maps
    logit_scale: float = 100.0  # the classifier reads the pooled (unit-norm) features times this
    beta: float = 0.05  # step of the class feature centres towards each batch's features
    centre_weight: float = 1.0  # weight of the centre loss on the pooled features
    # [low, high]: per training image a fraction drawn in it, times the chosen map's maximum,
    # thresholds the crop (pixels at or above it are kept) ...
    crop_theta: list[float] = field(default_factory=lambda: [0.4, 0.6])
    # ... and the drop (pixels at or above it are zeroed)
    drop_theta: list[float] = field(default_factory=lambda: [0.2, 0.5])
    crop_padding: float = 0.1  # the training crop box grows by this fraction of the image side
    # What eval and predict return. crops_flip: the reference's test, raw logits and those of 3
    # attention crops averaged on the image and on its mirror (8 encoder passes); single_crop: raw +
    # 1 crop (2 passes); raw: the raw image's logits (1 pass).
    test_time: str = "crops_flip"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.RANGES:
            value = list(getattr(self, name))
            if len(value) != 2 or not 0 <= value[0] <= value[1] <= 1:
                raise ConfigError(f"config key '{self.key(name)}' must be [low, high] with "
                                  f"0 <= low <= high <= 1, got {value}")


@dataclass
class CALViTConfig(FreezableConfig, CALConfig):
    """CAL on a ViT's patch grid; frozen backbone by default (the ILA paper's Table 1, arXiv
    2409.11051), `frozen: false` fine-tunes it all."""

    section: ClassVar[str] = "cal"

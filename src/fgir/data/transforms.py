"""Augmentation presets of the GLSim recipe (GLSim, arXiv:2407.12891, experimental setup).

Train: square resize to round(resize_ratio * image_size) (aspect not kept, as in the reference),
random crop, horizontal flip, optional colour jitter (Animesion); `medium` adds TrivialAugmentWide
and random erasing; `strong` adds a batch-level MixUp/CutMix whose soft targets the loss must use
(the reference mixed the images but kept hard labels - a flaw not copied). Test: the same square
resize, then a centre crop (`data.test_resize=crop`), or a resize straight to the image size
(`direct`, as Animesion evaluates). `data.auto_augment` adds timm's RandAugment or AugMix
(fgir.data.auto_augment) after the flip and before the colour jitter, as timm orders them, on a PIL
image in both backends; in `medium` and `strong` it takes TrivialAugmentWide's place.
`data.transform_backend` picks where the image steps run. `tensor` (default): the PIL image becomes
a uint8 tensor first and resize, crop, flip and TrivialAugment run on it (colour jitter in PIL,
where it is faster), then one fused step converts to float and normalises (`NormalizeUint8`).
`pil`: the same steps on PIL images (Pillow's resampling and colour arithmetic, as the reference
implementations), then the tensor steps.
Both draw the same random numbers in the same order, so a seed gives the same crop, flip, jitter
factors and TrivialAugment op; pixels agree to a grey level, except where the colour arithmetic
differs (hue: Pillow shifts it in 8-bit HSV, torch in float) or an op amplifies that grey level.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.transforms import InterpolationMode, v2

from fgir.config import ConfigError, DataConfig
from fgir.data.auto_augment import policy_transform

AUGMENT_PRESETS = ("weak", "medium", "strong")
TRANSFORM_BACKENDS = ("tensor", "pil")


class NormalizeUint8(nn.Module):
    """uint8 image tensor (..., 3, H, W) -> float32 (x / 255 - mean) / std, computed in one pass as
    (x - 255 mean) * 1 / (255 std): the work of ToDtype(scale=True) + Normalize without the
    intermediate float image."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        mean_, std_ = (torch.tensor(values, dtype=torch.float64).view(-1, 1, 1) for values in (mean, std))
        self.register_buffer("shift", (255 * mean_).float())
        self.register_buffer("scale", (1 / (255 * std_)).float())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.to(torch.float32).sub_(self.shift).mul_(self.scale)


class ToUnitFloat(nn.Module):
    """uint8 image tensor -> float32 in [0, 1] as torchvision's ToTensor computes it (x / 255; v2's
    ToDtype multiplies by 1 / 255, a few float32 ulps away, which a small std amplifies)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.to(torch.float32).div_(255)


def resize_size(data: DataConfig) -> int:
    """Side of the square every image is resized to before cropping (300 for 224 at ratio 1.34)."""
    return round(data.resize_ratio * data.image_size)


def test_resize_size(data: DataConfig) -> int:
    """Side of the square a test image is resized to (before any centre crop)."""
    return resize_size(data) if data.test_resize == "crop" else data.image_size


# The erased box: 2% to 40% of the image, aspect 0.3 to 3.3, as both reference transforms draw it
# (GLSim, arXiv 2407.12891; ILA, arXiv 2409.11051); torchvision's default area is at most 33%.
ERASING = {"scale": (0.02, 0.4), "ratio": (0.3, 3.3)}
INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def square_resize(side: int, interpolation: str = "bilinear") -> v2.Resize:
    """Antialiased resize to side x side (the aspect ratio is not kept, as in the reference);
    `bicubic` is what the GLSim / ILA / Animesion reference transforms use."""
    return v2.Resize((side, side), interpolation=INTERPOLATIONS[interpolation], antialias=True)


def build_transform(data: DataConfig, train: bool) -> v2.Compose:
    """PIL image -> normalised float32 tensor (3, image_size, image_size)."""
    if data.augment not in AUGMENT_PRESETS:
        raise ConfigError(f"data.augment must be one of {', '.join(AUGMENT_PRESETS)}, got '{data.augment}'")
    if data.transform_backend not in TRANSFORM_BACKENDS:
        raise ConfigError(f"data.transform_backend must be one of {', '.join(TRANSFORM_BACKENDS)}, "
                          f"got '{data.transform_backend}'")
    if data.transform_backend == "tensor":
        # Why: torch's uint8 antialiased resize is faster than Pillow's (same result to a grey level)
        # and the fused normalisation skips a float image (timings: docs/benchmarks.md).
        first, last = [v2.PILToTensor()], [NormalizeUint8(data.mean, data.std)]
    else:
        first, last = [], [v2.ToImage(), ToUnitFloat(), v2.Normalize(data.mean, data.std)]
    if not train:
        return v2.Compose([*first, square_resize(test_resize_size(data), data.interpolation), v2.CenterCrop(data.image_size), *last])
    steps = [*first, square_resize(resize_size(data), data.interpolation), v2.RandomCrop(data.image_size), v2.RandomHorizontalFlip()]
    pil_steps = pil_colour_steps(data)
    if pil_steps and data.transform_backend == "tensor":
        # timm's policies run on PIL images only; colour jitter's hue step is slower on a uint8
        # tensor (float HSV) than in Pillow, by more than a PIL round trip costs.
        steps += [v2.ToPILImage(), *pil_steps, v2.PILToTensor()]
    else:
        steps += pil_steps
    if data.augment == "weak":
        return v2.Compose([*steps, *last])
    policy = [] if data.auto_augment else [v2.TrivialAugmentWide()]
    return v2.Compose([*steps, *policy, *last, v2.RandomErasing(p=data.random_erasing, **ERASING)])


def pil_colour_steps(data: DataConfig) -> list[Callable]:
    """The train steps that run on PIL images in both backends, in timm's order: the
    `data.auto_augment` policy, then colour jitter."""
    steps: list[Callable] = []
    if data.auto_augment:
        steps.append(policy_transform(data.auto_augment, data.mean, data.interpolation))
    if data.color_jitter > 0:
        jitter = data.color_jitter
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter))
    return steps


def build_batch_mix(
    data: DataConfig, num_classes: int
) -> Callable[..., tuple[torch.Tensor, torch.Tensor]] | None:
    """For the `strong` preset, `(images, labels) -> (mixed images, soft targets (B, C))` applying
    MixUp or CutMix (chosen with probability 1/2 each) to a batch; None for the other presets.

    A mix whose alpha is 0 is left out; `strong` needs at least one of them.
    """
    if data.augment != "strong":
        return None
    mixes = []
    if data.mixup_alpha > 0:
        mixes.append(v2.MixUp(alpha=data.mixup_alpha, num_classes=num_classes))
    if data.cutmix_alpha > 0:
        mixes.append(v2.CutMix(alpha=data.cutmix_alpha, num_classes=num_classes))
    if not mixes:
        raise ConfigError("data.augment=strong needs data.mixup_alpha > 0 or data.cutmix_alpha > 0")
    return v2.RandomChoice(mixes)

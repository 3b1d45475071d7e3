"""Augmentation presets of the GLSim recipe (spec/glsim.md, "Training recipe").

Train: square resize to round(resize_ratio * image_size) (aspect not kept, as in the reference),
random crop, horizontal flip, optional colour jitter (Animesion); `medium` adds TrivialAugmentWide
and random erasing; `strong` adds a batch-level MixUp/CutMix whose soft targets the loss must use
(the reference mixed the images but kept hard labels - a flaw not copied). Test: the same square
resize, then a centre crop (`data.test_resize=crop`), or a resize straight to the image size
(`direct`, as Animesion evaluates).
Geometric and colour steps run on PIL images (Pillow's resampling), then the tensor steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import InterpolationMode, v2

from fgir.config import ConfigError, DataConfig

AUGMENT_PRESETS = ("weak", "medium", "strong")


def resize_size(data: DataConfig) -> int:
    """Side of the square every image is resized to before cropping (300 for 224 at ratio 1.34)."""
    return round(data.resize_ratio * data.image_size)


def test_resize_size(data: DataConfig) -> int:
    """Side of the square a test image is resized to (before any centre crop)."""
    return resize_size(data) if data.test_resize == "crop" else data.image_size


def build_transform(data: DataConfig, train: bool) -> v2.Compose:
    """PIL image -> normalised float32 tensor (3, image_size, image_size)."""
    if data.augment not in AUGMENT_PRESETS:
        raise ConfigError(f"data.augment must be one of {', '.join(AUGMENT_PRESETS)}, got '{data.augment}'")
    resize = v2.Resize((resize_size(data),) * 2, interpolation=InterpolationMode.BILINEAR, antialias=True)
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(data.mean, data.std)]
    if not train:
        test_resize = v2.Resize((test_resize_size(data),) * 2, interpolation=InterpolationMode.BILINEAR, antialias=True)
        return v2.Compose([test_resize, v2.CenterCrop(data.image_size), *to_tensor])
    steps = [resize, v2.RandomCrop(data.image_size), v2.RandomHorizontalFlip()]
    if data.color_jitter > 0:
        jitter = data.color_jitter
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter))
    if data.augment == "weak":
        return v2.Compose([*steps, *to_tensor])
    return v2.Compose([*steps, v2.TrivialAugmentWide(), *to_tensor, v2.RandomErasing(p=data.random_erasing)])


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

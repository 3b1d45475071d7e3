"""timm's RandAugment and AugMix as a step of the training transform (`data.auto_augment`).

RandAugment (Cubuk et al., arXiv:1909.13719) and AugMix (Hendrycks et al., arXiv:1912.02781) are
built by timm's own factories from timm's policy strings (`rand-m9-mstd0.5-inc1`, `augmix-m5-w4-d2`;
the config checks them, `fgir.config_fields.timm_policy`) with the hyper-parameters timm's ImageNet
training transform gives them: the mean colour (`data.mean`) as fill, the run's resampling filter,
translations up to 45% of the image side (timm's default; AugMix: 30%). They run on the PIL image
after the crop and flip, as in timm. AugMix here is its augment-and-mix image only: the
Jensen-Shannon consistency loss and split batch norm it is usually trained with are not part of it.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

AUGMIX_TRANSLATE_FRACTION = 0.3  # of the image side: timm's translate_pct for AugMix


def policy_transform(policy: str, mean: list[float], interpolation: str) -> Callable[[Image.Image], Image.Image]:
    """timm's transform for a checked `policy`: PIL image in, PIL image out. It draws from Python's
    and NumPy's global random state (the dataset seeds both per sample)."""
    from timm.data.auto_augment import augment_and_mix_transform, rand_augment_transform
    from timm.data.transforms import str_to_pil_interp

    # timm also sets translate_const (int(0.45 * image_size)): only AutoAugment's absolute
    # translations read it, never an op of these two policies.
    hparams = {
        "img_mean": tuple(min(255, round(255 * value)) for value in mean),
        "interpolation": str_to_pil_interp(interpolation),
    }
    if policy.split("-")[0] == "rand":
        return rand_augment_transform(policy, hparams)
    return augment_and_mix_transform(policy, {**hparams, "translate_pct": AUGMIX_TRANSLATE_FRACTION})

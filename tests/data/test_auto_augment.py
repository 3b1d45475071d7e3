"""data.auto_augment: timm's RandAugment / AugMix, checked against timm's own training transform."""

import dataclasses
import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.transforms_factory import transforms_imagenet_train
from torchvision.transforms import v2

from fgir.config import ConfigError, DataConfig, load_config
from fgir.data import ImageListDataset
from fgir.data.transforms import build_transform, square_resize

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
POLICIES = [("rand-m9-mstd0.5-inc1", "bilinear"), ("rand-m7-n3-p0.8", "bicubic"), ("augmix-m5-w4-d2", "bicubic"),
            ("augmix-m3-mstd0.5", "bilinear")]


def data_config(**overrides) -> DataConfig:
    return dataclasses.replace(DataConfig(image_size=16, resize_ratio=1.25, mean=MEAN, std=STD), **overrides)


def photo(seed: int = 0) -> Image.Image:
    y, x = np.mgrid[0:24, 0:28]
    base = np.stack([127 + 100 * np.sin(x / (3 + c) + y / (4 + c) + c) for c in range(3)], axis=-1)
    noise = np.random.default_rng(seed).normal(0, 10, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def timm_reference(policy: str, interpolation: str, backend: str) -> v2.Compose:
    """fgir's crop and flip, then timm's own policy step and final steps, as timm's ImageNet training
    transform builds them (its hyper-parameters: translation, mean fill, interpolation)."""
    _, policy_step, final = transforms_imagenet_train(16, auto_augment=policy, interpolation=interpolation,
                                                      mean=MEAN, std=STD, color_jitter=None, separate=True)
    assert len(policy_step.transforms) == 1  # the policy alone
    crop = [square_resize(20, interpolation), v2.RandomCrop(16), v2.RandomHorizontalFlip()]
    if backend == "tensor":
        crop = [v2.PILToTensor(), *crop, v2.ToPILImage()]
    return v2.Compose([*crop, policy_step, final])


def seeded(transform, image, seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return transform(image)


@pytest.mark.parametrize("backend", ["tensor", "pil"])
@pytest.mark.parametrize(("policy", "interpolation"), POLICIES)
def test_train_transform_equals_timms_policy_pixel_for_pixel(policy, interpolation, backend):
    data = data_config(auto_augment=policy, transform_backend=backend, interpolation=interpolation)
    ours = build_transform(data, train=True)
    reference = timm_reference(policy, interpolation, backend)
    weak = build_transform(dataclasses.replace(data, auto_augment=None), train=True)
    image, changed = photo(), 0
    for seed in range(6):
        out = seeded(ours, image, seed)
        # A grey level is 1 / (255 * std) > 0.01 here: the tolerance only absorbs float rounding.
        torch.testing.assert_close(out, seeded(reference, image, seed), rtol=0, atol=1e-5)
        changed += not torch.equal(out, seeded(weak, image, seed))
    assert changed >= 3  # the policy did act (RandAugment skips each op with probability 1 - p)


def test_policy_replaces_trivial_augment_in_the_medium_preset():
    names = [type(step).__name__ for step in
             build_transform(data_config(augment="medium", auto_augment="rand-m9"), train=True).transforms]
    assert "TrivialAugmentWide" not in names and "RandAugment" in names and names[-1] == "RandomErasing"
    medium = [type(step).__name__ for step in build_transform(data_config(augment="medium"), train=True).transforms]
    assert "TrivialAugmentWide" in medium and "RandAugment" not in medium


def test_colour_jitter_follows_the_policy_as_in_timm():
    steps = build_transform(data_config(auto_augment="augmix-m5", color_jitter=0.1), train=True).transforms
    names = [type(step).__name__ for step in steps]
    assert names.index("AugMixAugment") + 1 == names.index("ColorJitter")


def test_a_sample_seed_fixes_the_augmix_draws(tmp_path):
    # AugMix draws its mixing weights from NumPy's global state: the dataset seeds it per sample.
    path = tmp_path / "0.png"
    photo().save(path)
    dataset = ImageListDataset([str(path)], [0], ["a"], build_transform(data_config(auto_augment="augmix-m5"), True))
    np.random.seed(1)
    state = np.random.get_state()
    first, _ = dataset[(0, 123)]
    np.random.rand()  # the caller's stream moves on; the sample's does not
    assert torch.equal(dataset[(0, 123)][0], first)
    assert not torch.equal(dataset[(0, 2**62 + 5)][0], first)
    np.random.seed(1)
    dataset[(0, 7)]
    assert np.array_equal(np.random.get_state()[1], state[1])  # the global stream is restored


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "augmix-m5-w4-d2", "rand", "augmix", "rand-tweights-m9"])
def test_timm_policies_load(policy):
    assert load_config(overrides=[f"data.auto_augment={policy}"]).data.auto_augment == policy


@pytest.mark.parametrize(("policy", "problem"), [
    ("randaug-m9", "it must start with 'rand' or 'augmix'"),
    ("rand-x9", "unknown section 'x9'; rand takes m<int>"),
    ("rand-m9.5", "unknown section 'm9.5'"),
    ("rand-m9-", "unknown section ''"),
    ("rand-tfoo", "unknown op set 'tfoo'"),
    ("augmix-n2", "unknown section 'n2'; augmix takes"),
    ("augmix-w0", "w .* must be >= 1"),
    ("rand-p2", r"p .* must be in \[0, 1\]"),
])
def test_bad_policies_are_refused_when_the_config_loads(policy, problem):
    with pytest.raises(ConfigError, match=f"config key 'data.auto_augment' must be null or a timm policy.*"
                                          f"got '{policy}': {problem}"):
        load_config(overrides=[f"data.auto_augment={policy}"])

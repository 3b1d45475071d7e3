import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from fgir.config import ConfigError, DataConfig, load_config
from fgir.data.transforms import NormalizeUint8, build_batch_mix, build_transform, resize_size

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def data_config(**overrides) -> DataConfig:
    return dataclasses.replace(DataConfig(image_size=4, resize_ratio=2.0, mean=MEAN, std=STD), **overrides)


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(
        np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    )


def test_resize_size_follows_the_recipe():
    assert resize_size(DataConfig(image_size=224, resize_ratio=1.34)) == 300
    assert resize_size(DataConfig(image_size=448, resize_ratio=1.34)) == 600


def photo_like_image(height: int, width: int, seed: int = 0) -> Image.Image:
    """Smooth shapes plus sensor-like noise: resampling rounding shows here as it would on a photo."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([127 + 100 * np.sin(x / (7 + 3 * c) + y / (9 + 2 * c) + c) for c in range(3)], axis=-1)
    noise = np.random.default_rng(seed).normal(0, 12, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("backend", ["tensor", "pil"])
def test_test_transform_is_centre_crop_then_normalise(backend):
    # An 8x8 image is already the resize size, so the result is a plain slice of its pixels.
    image = random_image(8, 8)
    out = build_transform(data_config(transform_backend=backend), train=False)(image)
    expected = (np.asarray(image)[2:6, 2:6] / 255 - MEAN) / STD
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor(expected.transpose(2, 0, 1), dtype=torch.float32))


def test_test_transform_squashes_aspect_and_is_deterministic():
    # A 20 x 10 image whose left half is black and right half white: a square resize keeps the
    # halves side by side (a short-side resize + crop would not).
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, 10:] = 255
    transform = build_transform(data_config(mean=[0, 0, 0], std=[1, 1, 1]), train=False)
    out = transform(Image.fromarray(pixels))
    assert out.shape == (3, 4, 4)
    assert out[:, :, :2].max() < 0.2 and out[:, :, 2:].min() > 0.8
    torch.testing.assert_close(transform(Image.fromarray(pixels)), out, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["tensor", "pil"])
@pytest.mark.parametrize("augment", ["weak", "medium", "strong"])
def test_train_transform_output_and_randomness(augment, backend):
    data = data_config(image_size=16, resize_ratio=1.5, augment=augment, transform_backend=backend)
    transform = build_transform(data, train=True)
    image = random_image(30, 20)
    torch.manual_seed(0)
    first = transform(image)
    assert first.shape == (3, 16, 16) and first.dtype == torch.float32
    torch.manual_seed(0)
    torch.testing.assert_close(transform(image), first, rtol=0, atol=0)
    assert any(not torch.equal(first, transform(image)) for _ in range(5))


def test_weak_train_crop_is_a_window_of_the_resized_image():
    data = data_config(image_size=4, resize_ratio=2.0, mean=[0, 0, 0], std=[1, 1, 1])
    image = random_image(8, 8)  # the resize to 8x8 is the identity
    full = torch.tensor(np.asarray(image).transpose(2, 0, 1) / 255, dtype=torch.float32)
    windows = [full[:, y : y + 4, x : x + 4] for y in range(5) for x in range(5)]
    windows += [w.flip(-1) for w in windows]
    transform = build_transform(data, train=True)
    for _ in range(10):
        out = transform(image)
        assert any(torch.allclose(out, w) for w in windows)


def test_fused_normalisation_equals_to_dtype_then_normalise():
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    image = torch.randint(0, 256, (3, 17, 13), dtype=torch.uint8)
    reference = v2.Normalize(mean, std)(v2.ToDtype(torch.float32, scale=True)(image))
    fused = NormalizeUint8(mean, std)(image)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-6)


def test_default_backend_is_tensor():
    assert DataConfig().transform_backend == "tensor"
    steps = build_transform(data_config(), train=True).transforms
    assert isinstance(steps[0], v2.PILToTensor) and isinstance(steps[-1], NormalizeUint8)
    assert not any(isinstance(step, (v2.ToImage, v2.ToDtype, v2.Normalize)) for step in steps)


def backend_outputs(data: DataConfig, train: bool, image: Image.Image, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same image through the tensor and the pil backend, each after torch.manual_seed(seed)."""
    outputs = []
    for backend in ("tensor", "pil"):
        transform = build_transform(dataclasses.replace(data, transform_backend=backend), train=train)
        torch.manual_seed(seed)
        outputs.append(transform(image))
    return outputs[0], outputs[1]


# One grey level, in normalised units: torch's uint8 resize and Pillow's round differently at most by this.
GREY_LEVEL = 1.01 / 255 / min(STD)


@pytest.mark.parametrize("test_resize", ["crop", "direct"])
def test_test_transform_of_both_backends_agrees_to_a_grey_level(test_resize):
    data = data_config(image_size=48, resize_ratio=1.34, test_resize=test_resize)
    tensor_out, pil_out = backend_outputs(data, False, photo_like_image(150, 200), seed=0)
    assert tensor_out.shape == pil_out.shape == (3, 48, 48)
    difference = (tensor_out - pil_out).abs()
    assert difference.max() <= GREY_LEVEL and difference.mean() <= GREY_LEVEL / 4


@pytest.mark.parametrize("augment", ["weak", "medium"])
def test_train_backends_draw_the_same_crop_and_flip_under_a_seed(augment):
    # Same random numbers in the same order: the same crop window, flip, TrivialAugment op and
    # erasing box. Some TrivialAugment ops turn a one-grey-level difference into more (posterize and
    # solarize thresholds, contrast and colour factors above 1) on a few pixels; another crop would
    # differ by tens of grey levels everywhere.
    data = data_config(image_size=32, resize_ratio=1.5, augment=augment)
    image = photo_like_image(60, 80)
    for seed in range(12):
        tensor_out, pil_out = backend_outputs(data, True, image, seed)
        difference = (tensor_out - pil_out).abs()
        if augment == "weak":
            assert difference.max() <= GREY_LEVEL
        assert (difference > GREY_LEVEL).float().mean() <= 0.05
        assert difference.mean() <= 2 * GREY_LEVEL
    another_draw = backend_outputs(data, True, image, seed=100)[0]
    assert (another_draw - backend_outputs(data, True, image, seed=0)[1]).abs().mean() > 10 * GREY_LEVEL


@pytest.mark.parametrize("augment", ["weak", "medium"])
def test_colour_jitter_draws_the_same_factors_in_both_backends(augment):
    # The jitter factors and order come from the same random numbers, but the hue arithmetic
    # differs (Pillow shifts hue in 8-bit HSV, torch in float), so pixels agree only on average.
    data = data_config(image_size=32, resize_ratio=1.5, augment=augment, color_jitter=0.1)
    image = photo_like_image(60, 80)
    for seed in range(12):
        tensor_out, pil_out = backend_outputs(data, True, image, seed)
        plain_pil = backend_outputs(dataclasses.replace(data, color_jitter=0.0), True, image, seed)[1]
        assert tensor_out.shape == pil_out.shape == (3, 32, 32) and tensor_out.dtype == torch.float32
        assert (tensor_out - pil_out).abs().mean() <= 2 * GREY_LEVEL
        assert not torch.allclose(pil_out, plain_pil)  # the jitter did change the colours


def test_unknown_backend_is_refused():
    with pytest.raises(ConfigError, match="data.transform_backend must be one of tensor, pil, got 'numpy'"):
        build_transform(data_config(transform_backend="numpy"), train=False)
    with pytest.raises(ConfigError, match="config key 'data.transform_backend' must be one of tensor, pil"):
        load_config(None, ["data.transform_backend=pillow"])


def test_unknown_preset_is_refused():
    with pytest.raises(ConfigError, match="data.augment must be one of weak, medium, strong, got 'wild'"):
        build_transform(data_config(augment="wild"), train=True)


def test_batch_mix_only_for_strong():
    assert build_batch_mix(data_config(augment="weak"), 5) is None
    assert build_batch_mix(data_config(augment="medium"), 5) is None


def test_batch_mix_gives_soft_targets_and_mixes_images():
    mix = build_batch_mix(data_config(augment="strong"), num_classes=5)
    torch.manual_seed(0)
    images = torch.rand(6, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    for _ in range(5):
        mixed, targets = mix(images, labels)
        assert mixed.shape == images.shape
        assert targets.shape == (6, 5) and targets.dtype == torch.float32
        torch.testing.assert_close(targets.sum(1), torch.ones(6))
        assert not torch.equal(mixed, images)
        # Each row's target weights its own label and the label of the partner it was mixed with.
        assert (targets[torch.arange(6), labels] > 0).all()


def test_strong_needs_some_mix():
    with pytest.raises(ConfigError, match="mixup_alpha > 0 or data.cutmix_alpha > 0"):
        build_batch_mix(data_config(augment="strong", mixup_alpha=0.0, cutmix_alpha=0.0), 5)
    only_cutmix = build_batch_mix(data_config(augment="strong", mixup_alpha=0.0), 5)
    _, targets = only_cutmix(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))
    torch.testing.assert_close(targets.sum(1), torch.ones(2))


def test_direct_test_resize_has_no_crop():
    # Animesion evaluates on the whole image resized to S x S: a 4x4 image at image_size 4 is kept whole.
    image = random_image(4, 4)
    out = build_transform(data_config(test_resize="direct"), train=False)(image)
    expected = (np.asarray(image) / 255 - MEAN) / STD
    torch.testing.assert_close(out, torch.tensor(expected.transpose(2, 0, 1), dtype=torch.float32))


def test_color_jitter_changes_colours_but_not_the_crop_window():
    data = data_config(image_size=4, resize_ratio=1.0, mean=[0, 0, 0], std=[1, 1, 1])
    image = random_image(4, 4)
    plain = build_transform(data, train=True)
    jittered = build_transform(dataclasses.replace(data, color_jitter=0.4), train=True)
    assert not any(isinstance(step, v2.ColorJitter) for step in plain.transforms)
    outputs = []
    for seed in range(4):
        torch.manual_seed(seed)
        reference = plain(image)
        torch.manual_seed(seed)
        outputs.append(jittered(image))
        assert outputs[-1].shape == reference.shape
    full = torch.tensor(np.asarray(image).transpose(2, 0, 1) / 255, dtype=torch.float32)
    assert all(not torch.allclose(out, full) and not torch.allclose(out, full.flip(-1)) for out in outputs)

"""data.interpolation=bicubic: the test pixels of the references' transform (torchvision's PIL
pipeline: bicubic square resize, centre crop or direct resize, ToTensor, Normalize)."""

import pytest
import torch
from torchvision import transforms as reference

from conftest import photo
from fgir.config import DataConfig
from fgir.data.transforms import build_transform, resize_size


def reference_test_transform(data: DataConfig):
    side = resize_size(data) if data.test_resize == "crop" else data.image_size
    return reference.Compose([reference.Resize((side, side), interpolation=reference.InterpolationMode.BICUBIC),
                              reference.CenterCrop(data.image_size), reference.ToTensor(),
                              reference.Normalize(data.mean, data.std)])


CUB_STD = [0.07625843, 0.04599726, 0.06182727]  # the GLSim/ILA references' CUB normalisation


@pytest.mark.parametrize("std", [None, CUB_STD], ids=["imagenet", "cub"])
@pytest.mark.parametrize("test_resize", ["crop", "direct"])
def test_bicubic_test_pixels_equal_torchvisions_pil_pipeline(test_resize, std):
    """Bit for bit: ToTensor's x / 255 (not x * (1 / 255), a few ulps away, magnified by a small std)."""
    data = DataConfig(image_size=224, interpolation="bicubic", transform_backend="pil", test_resize=test_resize)
    data.std = std or data.std
    ours, theirs = build_transform(data, train=False)(photo()), reference_test_transform(data)(photo())
    assert torch.equal(ours, theirs)


def test_the_tensor_backend_is_within_a_grey_level_of_it_and_bilinear_is_not():
    data = DataConfig(image_size=224, interpolation="bicubic")
    theirs = reference_test_transform(data)(photo())
    one_grey_level = 1.0 / 255 / min(data.std) + 1e-6
    assert (build_transform(data, train=False)(photo()) - theirs).abs().max() <= one_grey_level
    bilinear = build_transform(DataConfig(image_size=224, transform_backend="pil"), train=False)(photo())
    assert (bilinear - theirs).abs().max() > 5 * one_grey_level

import numpy as np
import pytest
import torch
from PIL import Image

from fgir.config import DataConfig
from fgir.data.datasets import ImageListDataset
from fgir.models.glsim import GLSimOutput
from fgir.tools.localization import box_hit_rate, chance_hit, model_to_original, original_to_model

# 40 px images -> resized to round(1.125 * 32) = 36 -> centre crop 32 cuts 2 px on each side.
DATA = DataConfig(name="toy", format="csv", root=".", num_classes=2, image_size=32, resize_ratio=1.125)


def test_model_boxes_map_back_through_resize_and_crop_by_hand():
    # A 60 x 40 image resized to 36 x 36: x scales by 60/36, y by 40/36; the crop offset is 2.
    sizes = torch.tensor([[60.0, 40.0]])
    mapped = model_to_original(torch.tensor([[0.0, 4.0, 32.0, 10.0]]), sizes, DATA)
    expected = torch.tensor([[2 * 60 / 36, 6 * 40 / 36, 34 * 60 / 36, 12 * 40 / 36]])
    assert torch.allclose(mapped, expected)
    back = original_to_model(mapped.view(2, 2), sizes.expand(2, 2), DATA)
    assert torch.allclose(back, torch.tensor([[0.0, 4.0], [32.0, 10.0]]), atol=1e-5)


class FixedBoxes(torch.nn.Module):
    """Answers every batch with the given boxes (model-input pixels), in dataset order."""

    def __init__(self, boxes: torch.Tensor):
        super().__init__()
        self.boxes = boxes
        self.seen = 0

    def forward_details(self, images: torch.Tensor) -> GLSimOutput:
        count = images.shape[0]
        boxes = self.boxes[self.seen:self.seen + count]
        self.seen += count
        empty = torch.zeros(count, 1)
        return GLSimOutput(empty, empty, empty.long(), boxes, None)


@pytest.fixture
def planted(tmp_path):
    """Three 40 x 40 images with detail boxes in original pixels."""
    paths = []
    for index in range(3):
        path = tmp_path / f"{index}.png"
        Image.fromarray(np.full((40, 40, 3), 50 * index, np.uint8)).save(path)
        paths.append(str(path))
    boxes = torch.tensor([[4.0, 4.0, 16.0, 16.0], [20.0, 10.0, 32.0, 22.0], [10.0, 24.0, 22.0, 36.0]])
    return ImageListDataset(paths, [0, 1, 0], ["a", "b"], boxes=boxes)


def to_model_pixels(boxes: torch.Tensor) -> torch.Tensor:
    # Square 40 px images: model = original * 36 / 40 - 2.
    return boxes * 36 / 40 - 2


def test_the_planted_box_itself_hits_every_time_with_iou_one(planted):
    result = box_hit_rate(FixedBoxes(to_model_pixels(planted.boxes)), planted, DATA, batch_size=2)
    assert result["num_images"] == 3 and result["hit_rate"] == 1.0
    assert result["mean_iou"] == pytest.approx(1.0, abs=1e-5)
    assert 0.0 < result["chance_hit_rate"] < 1.0


def test_a_box_far_from_the_detail_never_hits(planted):
    # Bottom right for the details at the top left and top middle, top right for the bottom-left one.
    far = to_model_pixels(torch.tensor([[30.0, 30.0, 40.0, 40.0], [32.0, 30.0, 40.0, 40.0], [30.0, 0.0, 40.0, 10.0]]))
    result = box_hit_rate(FixedBoxes(far), planted, DATA)
    assert result["hit_rate"] == 0.0 and result["mean_iou"] == pytest.approx(0.0, abs=1e-6)


def test_a_box_in_half_the_input_is_not_chance_one_half_hit_by_luck():
    # Box 16 x 32 in a 32 input: x start uniform on [0, 16]; the point x=8 is covered for starts
    # in [0, 8] (probability 1/2); y always covered -> 1/2. A point outside the input: 0.
    sizes = torch.tensor([[16.0, 32.0], [16.0, 32.0]])
    points = torch.tensor([[8.0, 5.0], [-1.0, 5.0]])
    assert torch.allclose(chance_hit(sizes, points, 32), torch.tensor([0.5, 0.0]))


def test_a_dataset_without_boxes_is_refused(planted):
    planted.boxes = None
    with pytest.raises(ValueError, match="needs a dataset with boxes"):
        box_hit_rate(FixedBoxes(torch.zeros(3, 4)), planted, DATA)

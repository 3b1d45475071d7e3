import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fgir.app.limits import UploadError
from fgir.app.recognizer import Recognizer, example_images, overlay
from fgir.data import build_transform, ensure_synthetic, read_image, read_split_csv
from fgir.engine.checkpoint import load_checkpoint
from fgir.tools.attention import last_layer_cls_attention


def model_input(checkpoint_path, picture):
    data = load_checkpoint(checkpoint_path).config.data
    batch = build_transform(data, train=False)(read_image(picture)).unsqueeze(0)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (data.mean, data.std))
    return batch, (batch[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def normalised_upsampled(grid: torch.Tensor) -> np.ndarray:
    heat = F.interpolate(grid[None, None].float(), size=(32, 32), mode="bilinear")[0, 0]
    return ((heat - heat.min()) / (heat.max() - heat.min())).numpy()


def test_glsim_answer_is_the_models_top5_with_its_similarity_map_and_crop(glsim_checkpoint, picture):
    path, model = glsim_checkpoint
    answer = Recognizer.from_checkpoint(path, device="cpu").answer(picture, "picture.png")
    batch, shown = model_input(path, picture)
    with torch.no_grad():
        details = model.forward_details(batch)
    probabilities = details.logits.softmax(1)[0]
    order = probabilities.argsort(descending=True)[:5].tolist()
    names = load_checkpoint(path).class_names
    assert list(answer.top) == [names[i] for i in order]
    assert list(answer.top.values()) == pytest.approx(probabilities[order].tolist(), abs=1e-6)
    left_out = probabilities[probabilities.argsort(descending=True)[5]]  # six classes, five shown
    assert sum(answer.top.values()) == pytest.approx(1 - float(left_out), abs=1e-6)

    assert answer.heat_map.dtype == np.uint8 and answer.heat_map.shape == (32, 32, 3)
    expected = overlay(shown, normalised_upsampled(details.scores[0].reshape(4, 4)))
    assert np.abs(answer.heat_map.astype(int) - expected.astype(int)).max() <= 1
    x0, y0, x1, y1 = (int(v) for v in details.boxes[0].tolist())
    assert answer.crop.shape == (y1 - y0, x1 - x0, 3) and answer.crop.dtype == np.uint8
    assert np.abs(answer.crop / 255 - shown[y0:y1, x0:x1]).max() <= 0.5 / 255 + 1e-6


def test_a_plain_vit_gets_its_last_layer_cls_attention_and_no_crop(vit_checkpoint, picture):
    path, model = vit_checkpoint
    recognizer = Recognizer.from_checkpoint(path, device="cpu")
    assert not recognizer.explains and recognizer.examples == []  # the dataset is not on disk
    answer = recognizer.answer(picture, "picture.png")
    batch, shown = model_input(path, picture)
    expected = overlay(shown, normalised_upsampled(last_layer_cls_attention(model.backbone, batch)[0]))
    assert answer.crop is None
    assert np.abs(answer.heat_map.astype(int) - expected.astype(int)).max() <= 1


def test_a_bad_upload_raises_the_limits_error(glsim_checkpoint, tmp_path):
    fake = tmp_path / "upload"
    fake.write_text("hello")
    with pytest.raises(UploadError, match=r"^notes\.png is not an image file"):
        Recognizer.from_checkpoint(glsim_checkpoint[0], device="cpu").answer(fake, "notes.png")


def test_overlay_blends_jet_colours_half_and_half():
    image = np.ones((1, 2, 3))
    heat = np.array([[0.0, 1.0]])  # jet(0) = (0, 0, 0.5), jet(1) = (0.5, 0, 0)
    expected = np.rint(np.array([[[0.5, 0.5, 0.75], [0.75, 0.5, 0.5]]]) * 255).astype(np.uint8)
    assert np.array_equal(overlay(image, heat), expected)


def test_examples_are_one_test_image_per_class_when_the_dataset_is_on_disk(tiny_config, tmp_path):
    data = tiny_config().data
    assert example_images(data) == []  # not generated yet: serving never generates it
    readable = ensure_synthetic(data)
    examples = example_images(data)
    rows = read_split_csv(tmp_path / "synthetic" / readable.test)
    first_per_class = {}
    for relative, label in zip(rows.paths, rows.labels, strict=True):
        first_per_class.setdefault(label, str(tmp_path / "synthetic" / relative))
    assert examples == list(first_per_class.values()) and len(examples) == 3  # three classes
    assert example_images(data, count=2) == examples[:2]


def test_examples_never_generate_a_synthetic_set_nor_touch_one_with_other_parameters(tiny_config, tmp_path):
    root = tmp_path / "synthetic"
    assert example_images(tiny_config().data) == [] and not root.exists()  # missing: not generated
    root.mkdir()
    assert example_images(tiny_config().data) == [] and not any(root.iterdir())  # empty: not generated
    ensure_synthetic(tiny_config().data)
    before = {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}
    assert example_images(tiny_config("data.synthetic.seed=1").data) == []  # same folder, another set
    assert {path: path.read_bytes() for path in root.rglob("*") if path.is_file()} == before

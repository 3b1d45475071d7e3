"""`fgir explain` titles: the probability `fgir predict` shows, the true class when the dataset lists
the image; the heat maps get a colour bar."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_explain import tiny_model_config, write_images

from fgir.config import DataConfig, SyntheticConfig
from fgir.data.synthetic import class_names, ensure_synthetic
from fgir.engine.checkpoint import save_checkpoint, update_metadata
from fgir.methods import build_model
from fgir.tools import explain
from fgir.tools.calibration import CALIBRATION_KEY
from fgir.tools.explain import RIGHT, WRONG, explain_images, listed_labels
from fgir.tools.plots import image_panels
from fgir.tools.predictor import Predictor

CLASS_NAMES = ["ant", "bee", "cat"]


@pytest.fixture
def titles(monkeypatch):
    """The title of every figure explain_images draws, in order."""
    seen = []

    def recording(panels, path, title="", **kwargs):
        seen.append(title)
        return image_panels(panels, path, title=title, **kwargs)

    monkeypatch.setattr(explain, "image_panels", recording)
    return seen


def confident_checkpoint(tmp_path, data: DataConfig | None = None, temperature: float | None = 4.0):
    """A vit checkpoint with a random head (confident, varied predictions), calibrated to `temperature`."""
    config = tiny_model_config("vit")
    if data is not None:
        config = dataclasses.replace(config, data=data)
    torch.manual_seed(0)
    model = build_model(config.model, 3, 32, pretrained=False).eval()
    torch.nn.init.normal_(model.head.weight, std=3.0)
    path = save_checkpoint(tmp_path / "vit.safetensors", model, config, CLASS_NAMES, epoch=1, global_step=1)
    if temperature is not None:
        update_metadata(path, {CALIBRATION_KEY: json.dumps({"temperature": temperature})})
    return path


def test_the_title_shows_the_calibrated_probability_predict_shows(tmp_path, titles):
    path = confident_checkpoint(tmp_path)
    write_images(tmp_path / "photos", ["a.png", "b.png"])
    images = [tmp_path / "photos" / "a.png", tmp_path / "photos" / "b.png"]
    explain_images(path, images, tmp_path / "out", device="cpu")

    calibrated = Predictor.from_checkpoint(path, device="cpu").predict(images, topk=1)
    raw = Predictor.from_checkpoint(path, device="cpu", temperature=1.0).predict(images, topk=1)
    for title, shown, uncalibrated in zip(titles, calibrated, raw, strict=True):
        top = shown.topk[0]
        assert title == f"predicted: {top.class_name} ({100 * top.probability:.1f}%)"
        assert f"{100 * top.probability:.1f}" != f"{100 * uncalibrated.topk[0].probability:.1f}"


def test_the_true_class_of_an_image_listed_in_a_split(tmp_path, titles):
    root = tmp_path / "toy"
    write_images(root, ["a.png", "b.png", "c.png"])
    data = dataclasses.replace(tiny_model_config("vit").data, root=str(root), train="train.csv", val=None,
                               test="test.csv")
    path = confident_checkpoint(tmp_path, data)
    images = [root / "a.png", root / "b.png", root / "c.png"]
    predicted = [p.topk[0].class_id for p in Predictor.from_checkpoint(path, device="cpu").predict(images, topk=1)]
    # a: right in train.csv, b: wrong in test.csv, c: listed nowhere (val is not configured).
    (root / "train.csv").write_text(f"class_id,dir\n{predicted[0]},a.png\n")
    (root / "test.csv").write_text(f"class_id,dir\n{(predicted[1] + 1) % 3},b.png\n")
    assert listed_labels(data, 3) == {str(root / "a.png"): predicted[0], str(root / "b.png"): (predicted[1] + 1) % 3}
    assert listed_labels(data, 4) == {}  # another dataset: its labels mean other classes

    explain_images(path, images, tmp_path / "out", device="cpu")
    assert titles[0].endswith(f"    true: {CLASS_NAMES[predicted[0]]} {RIGHT}")
    assert titles[1].endswith(f"    true: {CLASS_NAMES[(predicted[1] + 1) % 3]} {WRONG}")
    assert "true:" not in titles[2]


def test_a_synthetic_set_is_read_when_present_and_never_generated_or_replaced(tmp_path):
    data = DataConfig(format="synthetic", root=str(tmp_path / "synthetic"),
                      synthetic=SyntheticConfig(num_classes=2, train_per_class=1, val_per_class=1,
                                                test_per_class=1, image_size=32))
    assert listed_labels(data, 2) == {}
    assert not (tmp_path / "synthetic").exists()
    ensure_synthetic(data)
    test_image = str(tmp_path / "synthetic" / "images" / class_names(2)[1] / "test_0.png")
    assert len(listed_labels(data, 2)) == 6 and listed_labels(data, 2)[test_image] == 1
    other = dataclasses.replace(data, synthetic=dataclasses.replace(data.synthetic, seed=1))
    before = (tmp_path / "synthetic" / "manifest.json").read_text()
    assert listed_labels(other, 2) == {}  # not the set this checkpoint was trained on
    assert (tmp_path / "synthetic" / "manifest.json").read_text() == before


def jet_extremes(png) -> tuple[bool, bool]:
    """Whether the figure has pixels of the colour map's two ends, dark red and dark blue."""
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    red = (np.abs(pixels - [128, 0, 0]).max(axis=-1) <= 8).any()
    blue = (np.abs(pixels - [0, 0, 128]).max(axis=-1) <= 8).any()
    return bool(red), bool(blue)


def test_heat_maps_get_a_colour_bar(tmp_path):
    white = np.ones((16, 16, 3))
    heat = np.linspace(0, 1, 256).reshape(16, 16)
    # Heat maps are blended over white at alpha 0.5: no pixel of a panel is dark red or dark blue.
    assert jet_extremes(image_panels([("plain", white, None, None)], tmp_path / "plain.png")) == (False, False)
    drawn = image_panels([("plain", white, None, None), ("heat", white, heat, None)], tmp_path / "heat.png")
    assert jet_extremes(drawn) == (True, True)

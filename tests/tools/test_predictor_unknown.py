"""The calibrated temperature and the "unknown" answer of the Predictor, format_predictions and
`fgir predict --unknown-below`."""

import json

import pytest
import torch
from test_calibration import model_logits, overconfident  # noqa: F401 (a fixture)

from fgir.data import read_image
from fgir.tools.calibration import calibrate_checkpoint, stored_temperature
from fgir.tools.predictor import (
    UNKNOWN_LABEL,
    ClassScore,
    Prediction,
    Predictor,
    PredictorError,
    format_predictions,
)

THRESHOLD = 0.9


@pytest.fixture(scope="module")
def calibrated(overconfident, tmp_path_factory):  # noqa: F811
    """The over-confident checkpoint and a copy of it calibrated on its val split."""
    path, model, config = overconfident
    copy = tmp_path_factory.mktemp("unknown") / "calibrated.safetensors"
    copy.write_bytes(path.read_bytes())
    calibrate_checkpoint(copy, progress=False)
    root = config.data.root
    test_images = [f"{root}/{line.split(',')[1]}" for line in open(f"{root}/test.csv").read().split()[1:]]
    return path, copy, model, config, test_images


def test_calibrated_checkpoint_flattens_probabilities_and_answers_unknown(calibrated):
    raw_path, calibrated_path, model, config, images = calibrated
    temperature = stored_temperature(calibrated_path)
    assert temperature > 2
    logits = model_logits(model, config, [image.removeprefix(config.data.root + "/") for image in images])

    raw = Predictor.from_checkpoint(raw_path, device="cpu", unknown_below=THRESHOLD)
    scaled = Predictor.from_checkpoint(calibrated_path, device="cpu", unknown_below=THRESHOLD)
    assert (raw.temperature, scaled.temperature) == (1.0, temperature)
    counts = {}
    for predictor, divisor in ((raw, 1.0), (scaled, temperature)):
        predictions = predictor.predict(images, topk=2)
        expected = (logits / divisor).softmax(dim=1).topk(2)
        assert [[s.class_id for s in p.topk] for p in predictions] == expected.indices.tolist()
        assert [s.probability for p in predictions for s in p.topk] == pytest.approx(
            expected.values.flatten().tolist(), abs=1e-5)
        assert [p.unknown for p in predictions] == (expected.values[:, 0] < THRESHOLD).tolist()
        counts[divisor] = sum(p.unknown for p in predictions)
    # The over-confident softmax names nearly every image; the calibrated one doubts most of them.
    assert counts[1.0] < counts[temperature] and counts[temperature] > len(images) // 2

    # An explicit temperature of 1 gives the raw softmax of a calibrated checkpoint; no threshold, no unknown.
    plain = Predictor.from_checkpoint(calibrated_path, device="cpu", temperature=1.0).predict(images, topk=1)
    assert [p.topk[0].probability for p in plain] == pytest.approx(logits.softmax(dim=1).max(dim=1).values.tolist(),
                                                                   abs=1e-5)
    assert not any(p.unknown for p in plain)


def test_threshold_edges_and_bad_settings(calibrated):
    _, calibrated_path, _, _, images = calibrated
    never = Predictor.from_checkpoint(calibrated_path, device="cpu", unknown_below=0.0).predict(images)
    always = Predictor.from_checkpoint(calibrated_path, device="cpu", unknown_below=1.0).predict(images)
    assert not any(p.unknown for p in never) and all(p.unknown for p in always)
    with pytest.raises(PredictorError, match="unknown_below is a probability in \\[0, 1\\], got 50"):
        Predictor.from_checkpoint(calibrated_path, device="cpu", unknown_below=50)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(PredictorError, match="temperature must be a positive number"):
            Predictor.from_checkpoint(calibrated_path, device="cpu", temperature=bad)


def test_unknown_in_the_table_and_the_json():
    predictions = [
        Prediction("cat.jpg", [ClassScore(2, "gamma", 0.35), ClassScore(0, "alpha", 0.25)], unknown=True),
        Prediction("miku.png", [ClassScore(1, "beta", 0.875)]),
    ]
    lines = format_predictions(predictions).splitlines()
    assert lines[1].split() == ["cat.jpg", "-", *UNKNOWN_LABEL.split()]
    assert lines[2].split() == ["1", "gamma", "35.00%"] and lines[3].split() == ["2", "alpha", "25.00%"]
    assert lines[4].split() == ["miku.png", "1", "beta", "87.50%"] and len(lines) == 5
    decoded = json.loads(format_predictions(predictions, as_json=True))
    assert [d["unknown"] for d in decoded] == [True, False]
    assert [Prediction(d["image"], [ClassScore(**s) for s in d["topk"]], d["unknown"]) for d in decoded] == predictions


def test_batch_probabilities_use_the_temperature(calibrated):
    _, calibrated_path, model, config, images = calibrated
    predictor = Predictor.from_checkpoint(calibrated_path, device="cpu")
    batch = torch.stack([predictor.transform(read_image(image)) for image in images[:2]])
    with torch.no_grad():
        expected = (model(batch) / predictor.temperature).softmax(dim=1)
    assert torch.allclose(predictor.probabilities(batch), expected, atol=1e-6)

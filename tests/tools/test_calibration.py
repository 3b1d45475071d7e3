import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval_report import tiny_config as report_config

from fgir.config import Config, ConfigError
from fgir.data import build_transform, read_image
from fgir.engine import metrics
from fgir.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, update_metadata
from fgir.engine.metrics import (
    answered_at,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)
from fgir.methods import build_model
from fgir.tools import calibration
from fgir.tools.calibration import (
    CALIBRATION_KEY,
    MIN_TEMPERATURE,
    CalibrationError,
    calibrate_checkpoint,
    fit_temperature,
    read_calibration,
    stored_temperature,
)
from fgir.tools.eval_report import evaluate_checkpoint

CLASS_NAMES = ["alpha", "beta", "gamma", "delta"]


def calibrated_sample(n=10000, classes=10, seed=0):
    """Logits z and labels drawn from softmax(z): a perfectly calibrated model by construction."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator) * 2
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)
    return logits, labels


def ece_by_loop(probabilities, labels, n_bins):
    """Guo et al.'s ECE written out: bins (b/n, (b+1)/n], zero confidence in the first bin."""
    confidence, prediction = probabilities.max(dim=1)
    total = 0.0
    for b in range(n_bins):
        low, high = b / n_bins, (b + 1) / n_bins
        members = [i for i, c in enumerate(confidence.tolist()) if low < c <= high or (b == 0 and c == 0)]
        if members:
            accuracy = sum(prediction[i] == labels[i] for i in members).item() / len(members)
            mean_confidence = sum(confidence[i].item() for i in members) / len(members)
            total += len(members) / len(labels) * abs(accuracy - mean_confidence)
    return total


def test_ece_equals_a_loop_over_bins():
    torch.manual_seed(0)
    logits = torch.randn(300, 7) * 3
    labels = torch.randint(0, 7, (300,))
    for n_bins in (15, 4, 1):
        expected = ece_by_loop(logits.double().softmax(dim=1), labels, n_bins)
        assert expected_calibration_error(logits, labels, n_bins) == pytest.approx(expected, abs=1e-12)
    assert expected_calibration_error(logits, labels, 15, temperature=2.0) == pytest.approx(
        ece_by_loop((logits.double() / 2).softmax(dim=1), labels, 15), abs=1e-12)


def test_row_chunks_change_nothing(monkeypatch):
    logits, labels = calibrated_sample(n=1000, classes=6, seed=5)
    logits = 2 * logits
    whole = (negative_log_likelihood(logits, labels, 1.5), expected_calibration_error(logits, labels, 15, 1.5),
             fit_temperature(logits, labels))
    assert whole[0] == pytest.approx(torch.nn.functional.cross_entropy(logits.double() / 1.5, labels).item())
    monkeypatch.setattr(metrics, "CHUNK_ROWS", 7)
    monkeypatch.setattr(calibration, "CHUNK_ROWS", 7)
    chunked = (negative_log_likelihood(logits, labels, 1.5), expected_calibration_error(logits, labels, 15, 1.5),
               fit_temperature(logits, labels))
    assert chunked == pytest.approx(whole, rel=1e-12)


def test_reliability_bins_on_hand_made_confidences():
    # Confidences 0.5 (bin (0.25, 0.5]), 0.9 twice (bin (0.75, 1]), 1.0 (bin (0.75, 1]) with 4 bins.
    probabilities = torch.tensor([[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [0.05, 0.9, 0.05], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 0, 2, 2])  # right, right, wrong, right
    confidence, prediction = probabilities.max(dim=1)
    bins = reliability_bins(confidence, prediction == labels, n_bins=4)
    assert bins.counts.tolist() == [0, 1, 0, 3]
    assert bins.accuracy[[1, 3]].tolist() == pytest.approx([1.0, 2 / 3])
    assert bins.confidence[[1, 3]].tolist() == pytest.approx([0.5, (0.9 + 0.9 + 1.0) / 3])
    assert bins.accuracy[[0, 2]].isnan().all() and bins.confidence[[0, 2]].isnan().all()
    assert bins.ece == pytest.approx(1 / 4 * 0.5 + 3 / 4 * abs(2 / 3 - 2.8 / 3))


def test_answered_at_a_threshold():
    confidence = torch.tensor([0.2, 0.5, 0.5, 0.9, 0.95])
    correct = torch.tensor([True, False, True, True, False])
    assert answered_at(confidence, correct, 0.5) == {"threshold": 0.5, "answered": 80.0,
                                                     "accuracy_answered": pytest.approx(50.0)}
    assert answered_at(confidence, correct, 0.9)["accuracy_answered"] == pytest.approx(50.0)
    assert answered_at(confidence, correct, 0.0)["answered"] == 100.0
    assert answered_at(confidence, correct, 0.99) == {"threshold": 0.99, "answered": 0.0, "accuracy_answered": None}


def test_temperature_recovers_a_known_scaling_and_lowers_ece_and_nll():
    logits, labels = calibrated_sample()
    for scale in (3.0, 0.5):  # over-confident, then under-confident
        scaled = scale * logits
        temperature = fit_temperature(scaled, labels)
        assert temperature == pytest.approx(scale, rel=0.03)
        before = expected_calibration_error(scaled, labels)
        after = expected_calibration_error(scaled, labels, temperature=temperature)
        assert before > 0.15 and after < 0.02
        assert negative_log_likelihood(scaled / temperature, labels) < negative_log_likelihood(scaled, labels) - 0.1


def nll_on_grid(logits, labels, temperatures):
    """Mean NLL of softmax(logits / T) for each T of a 1-D grid, all at once."""
    scaled = logits.double()[None] / temperatures[:, None, None]
    picked = scaled.gather(2, labels[None, :, None].expand(len(temperatures), -1, 1)).squeeze(2)
    return (scaled.logsumexp(dim=2) - picked).mean(dim=1)


def test_temperature_is_the_minimum_of_the_nll_on_a_grid():
    logits, labels = calibrated_sample(n=2000, classes=5, seed=3)
    logits = 2.2 * logits + 0.3 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(4))
    temperature = fit_temperature(logits, labels)
    coarse = torch.logspace(math.log10(0.5), math.log10(10), 200, dtype=torch.float64)
    best = coarse[nll_on_grid(logits, labels, coarse).argmin()].item()
    fine = torch.linspace(best * 0.97, best * 1.03, 601, dtype=torch.float64)  # steps of 0.01%
    nll = nll_on_grid(logits, labels, fine)
    assert temperature == pytest.approx(fine[nll.argmin()].item(), rel=2e-4)
    assert negative_log_likelihood(logits.double() / temperature, labels) <= nll.min().item() + 1e-12
    assert negative_log_likelihood(logits.double() / 2.2, labels) > nll.min().item()  # not the scale itself


def test_degenerate_splits():
    # Every label is the clear favourite: the NLL keeps falling as T -> 0, so the fit stops at the bound.
    logits = torch.eye(4).repeat(5, 1) * 10
    labels = torch.arange(4).repeat(5)
    assert fit_temperature(logits, labels) == pytest.approx(MIN_TEMPERATURE)
    # Equal logits: every temperature gives the same answer; T stays 1.
    assert fit_temperature(torch.zeros(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])) == 1.0
    with pytest.raises(CalibrationError, match="zero samples"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


# --- a checkpoint of an over-confident model and the dataset it is calibrated on ---------------------


def tiny_config(root, val="val.csv") -> Config:
    config = report_config(root)
    return dataclasses.replace(config, data=dataclasses.replace(config.data, val=val, num_classes=4))


def make_images(root, name, count, rng):
    (root / "images").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        relative = f"images/{name}_{i}.png"
        Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(root / relative)
        paths.append(relative)
    return paths


def model_logits(model, config, paths):
    transform = build_transform(config.data, train=False)
    with torch.no_grad():
        return model(torch.stack([transform(read_image(config.data.root + "/" + p)) for p in paths]))


def write_labels(root, name, paths, labels):
    lines = ["class_id,dir", *(f"{label},{path}" for label, path in zip(labels, paths, strict=True))]
    (root / f"{name}.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def overconfident(tmp_path_factory):
    """A checkpoint whose model is right on about 60% of val and test images but says ~95%+: labels
    are its own predictions for most images and a different class for the rest."""
    tmp_path = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(0)
    root = tmp_path / "toy"
    config = tiny_config(root)
    torch.manual_seed(0)
    model = build_model(config.model, 4, 32, pretrained=False).eval()
    torch.nn.init.normal_(model.head.weight, std=3.0)
    for split, count in (("train", 8), ("val", 40), ("test", 24)):
        paths = make_images(root, split, count, rng)
        predicted = model_logits(model, config, paths).argmax(dim=1).tolist()
        labels = [p if rng.random() < 0.6 else (p + 1 + int(rng.integers(0, 3))) % 4 for p in predicted]
        write_labels(root, split, paths, labels)
    path = save_checkpoint(tmp_path / "run" / "checkpoints" / "best.safetensors", model, config, CLASS_NAMES,
                           epoch=2, global_step=20, metrics={"val_top1": 61.0})
    return path, model, config


def test_calibrate_stores_the_temperature_and_keeps_everything_else(overconfident, tmp_path):
    path, model, config = overconfident
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(path.read_bytes())
    before = load_checkpoint(copy)
    assert read_calibration(copy) is None and stored_temperature(copy) == 1.0

    result = calibrate_checkpoint(copy, progress=False)
    root = config.data.root
    val_paths = [line.split(",")[1] for line in open(f"{root}/val.csv").read().split()[1:]]
    val_labels = torch.tensor([int(line.split(",")[0]) for line in open(f"{root}/val.csv").read().split()[1:]])
    logits = model_logits(model, config, val_paths)
    assert result["temperature"] == pytest.approx(fit_temperature(logits, val_labels), rel=1e-4)
    assert result["temperature"] > 2  # over-confident: probabilities are flattened
    assert result["num_samples"] == 40 and result["split"] == "val" and result["checkpoint"] == str(copy.resolve())
    assert result["ece_after"] < result["ece_before"] and result["nll_after"] < result["nll_before"]
    assert result["ece_before"] == pytest.approx(100 * expected_calibration_error(logits, val_labels), rel=1e-4)

    stored = read_calibration(copy)
    assert stored == {k: v for k, v in result.items() if k not in ("checkpoint", "skipped_images")}
    after = load_checkpoint(copy)
    assert (after.config, after.class_names, after.epoch, after.global_step, after.metrics) == (
        before.config, before.class_names, before.epoch, before.global_step, before.metrics)
    assert after.model_state.keys() == before.model_state.keys()
    assert all(torch.equal(after.model_state[k], before.model_state[k]) for k in before.model_state)
    assert [p.name for p in tmp_path.iterdir()] == ["copy.safetensors"]  # no temporary file left

    # Calibrating on another split replaces the stored temperature.
    again = calibrate_checkpoint(copy, split="test", progress=False)
    assert stored_temperature(copy) == again["temperature"] != result["temperature"]


def test_eval_reports_ece_before_and_after_the_stored_temperature(overconfident, tmp_path):
    path, model, config = overconfident
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(path.read_bytes())
    temperature = calibrate_checkpoint(copy, progress=False)["temperature"]
    report = evaluate_checkpoint(copy, out_dir=tmp_path / "calibrated", progress=False)

    root = config.data.root
    rows = [line.split(",") for line in open(f"{root}/test.csv").read().split()[1:]]
    logits = model_logits(model, config, [r[1] for r in rows])
    labels = torch.tensor([int(r[0]) for r in rows])
    assert report["ece"] == pytest.approx(100 * expected_calibration_error(logits, labels), rel=1e-4)
    assert report["nll"] == pytest.approx(negative_log_likelihood(logits, labels), rel=1e-4)
    assert (report["temperature"], report["temperature_split"]) == (temperature, "val")
    assert report["ece_calibrated"] == pytest.approx(
        100 * expected_calibration_error(logits, labels, temperature=temperature), rel=1e-4)
    assert report["nll_calibrated"] == pytest.approx(negative_log_likelihood(logits / temperature, labels), rel=1e-4)
    assert report["nll_calibrated"] < report["nll"]  # the val temperature carries over to the test split
    # The unknown-answer rates use the calibrated probabilities, as `predict` does.
    top = (logits / temperature).softmax(dim=1).max(dim=1)
    for rule in report["unknown_below"]:
        answered = top.values >= rule["threshold"]
        assert rule["answered"] == pytest.approx(100 * answered.double().mean().item())
        if answered.any():
            right = top.indices[answered] == labels[answered]
            assert rule["accuracy_answered"] == pytest.approx(100 * right.double().mean().item())
    with Image.open(tmp_path / "calibrated" / "reliability.png") as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]  # two panels side by side


def test_calibration_errors_name_the_culprit(overconfident, tmp_path):
    path, model, config = overconfident
    no_val = tmp_path / "no_val.safetensors"
    save_checkpoint(no_val, model, tiny_config(config.data.root, val=None), CLASS_NAMES, epoch=1, global_step=1)
    with pytest.raises(ConfigError, match="data.val is not set"):
        calibrate_checkpoint(no_val, progress=False)

    # A split labelled with the model's own answers is separated perfectly: no finite temperature fits.
    root = config.data.root
    paths = [line.split(",")[1] for line in open(f"{root}/train.csv").read().split()[1:]]
    write_labels(Path(root), "perfect", paths, model_logits(model, config, paths).argmax(dim=1).tolist())
    with pytest.raises(CalibrationError, match="split 'val' \\(8 images\\) ran to its bound T=0.01: the model "
                                               "separates this split perfectly"):
        calibrate_checkpoint(no_val, data_overrides=["data.val=perfect.csv"], progress=False)
    # Labels the model never gets right: the uniform answer (T -> infinity) is the best it can do.
    wrong = [(p + 1) % 4 for p in model_logits(model, config, paths).argmax(dim=1).tolist()]
    write_labels(Path(root), "wrong", paths, wrong)
    with pytest.raises(CalibrationError, match="T=100: the model's scores carry \\(almost\\) no information on "
                                               "this split \\(top-1 0.0%, uniform probabilities fit best\\)"):
        calibrate_checkpoint(no_val, data_overrides=["data.val=wrong.csv"], progress=False)
    assert read_calibration(no_val) is None  # nothing stored

    with pytest.raises(ValueError, match="config, format are written by save_checkpoint only"):
        update_metadata(no_val, {"config": "x", "format": "y"})
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(no_val.read_bytes())
    update_metadata(broken, {CALIBRATION_KEY: json.dumps({"temperature": -1})})
    with pytest.raises(CheckpointError, match="broken.safetensors: calibration temperature must be a positive"):
        read_calibration(broken)
    update_metadata(broken, {CALIBRATION_KEY: "{not json"})
    with pytest.raises(CheckpointError, match="broken.safetensors: unreadable 'calibration' metadata"):
        read_calibration(broken)
    assert load_checkpoint(broken).class_names == CLASS_NAMES  # the rest of the file is intact

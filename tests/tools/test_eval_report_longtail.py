"""The long-tail and calibration parts of the evaluation report."""

import csv

import numpy as np
import pytest
from PIL import Image
from test_eval_report import CLASS_NAMES, TEST_LABELS, random_head_model, tiny_config, write_split

from fgir.config import ConfigError
from fgir.engine.checkpoint import save_checkpoint
from fgir.tools.eval_report import evaluate_checkpoint

# Training images per class: head (> 100), medium (20..100), tail (< 20). Class 2 has no test image.
TRAIN_COUNTS = [150, 30, 3]


@pytest.fixture
def run(tmp_path):
    """A checkpoint, its test split, and a train split whose label file lists images that do not
    exist: the report reads the train labels only, never an image."""
    root = tmp_path / "toy"
    write_split(root, "test", TEST_LABELS, np.random.default_rng(0))
    rows = [f"{label},train/{label}_{i}.png" for label, count in enumerate(TRAIN_COUNTS) for i in range(count)]
    (root / "train.csv").write_text("class_id,dir\n" + "\n".join(rows) + "\n")
    config = tiny_config(root)
    path = save_checkpoint(tmp_path / "run" / "checkpoints" / "best.safetensors", random_head_model(config),
                           config, CLASS_NAMES, epoch=3, global_step=30)
    return path, tmp_path


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_head_medium_tail_from_the_written_predictions(run):
    path, tmp_path = run
    report = evaluate_checkpoint(path, out_dir=tmp_path / "out", progress=False)
    _, *rows = read_rows(tmp_path / "out" / "predictions.csv")
    labels, predicted = [int(r[1]) for r in rows], [int(r[3]) for r in rows]
    correct = {c: sum(p == t == c for t, p in zip(labels, predicted, strict=True)) for c in range(3)}
    support = {c: labels.count(c) for c in range(3)}
    assert 0 < correct[0] + correct[1] < len(rows)  # neither all right nor all wrong

    long_tail = report["long_tail"]
    assert (long_tail["head_above"], long_tail["tail_below"], long_tail["train_images"]) == (100, 20, 183)
    assert long_tail["head"] == {"classes": 1, "classes_evaluated": 1, "samples": support[0],
                                 "top1": pytest.approx(100 * correct[0] / support[0]),
                                 "mean_class_acc": pytest.approx(100 * correct[0] / support[0])}
    assert long_tail["medium"]["top1"] == pytest.approx(100 * correct[1] / support[1])
    assert long_tail["tail"] == {"classes": 1, "classes_evaluated": 0, "samples": 0, "top1": None,
                                 "mean_class_acc": None}

    _, *per_class = read_rows(tmp_path / "out" / "per_class.csv")
    assert [int(r[4]) for r in per_class] == TRAIN_COUNTS
    assert report["frequency_plot"] == "accuracy_vs_frequency.png"
    with Image.open(tmp_path / "out" / "accuracy_vs_frequency.png") as image:
        assert image.format == "PNG" and min(image.size) > 100


def test_thresholds_come_from_data_overrides(run):
    path, tmp_path = run
    report = evaluate_checkpoint(path, data_overrides=["data.long_tail.head_above=150",
                                                       "data.long_tail.tail_below=3"],
                                 out_dir=tmp_path / "out", progress=False)
    # 150 is not above 150: every class is medium now (3 is not below 3).
    groups = report["long_tail"]
    assert [groups[g]["classes"] for g in ("head", "medium", "tail")] == [0, 3, 0]
    assert groups["head"]["top1"] is None and groups["medium"]["samples"] == len(TEST_LABELS)
    assert groups["medium"]["mean_class_acc"] == pytest.approx(report["mean_class_acc"])
    with pytest.raises(ConfigError, match="'data.long_tail.tail_below' \\(50\\).*'data.long_tail.head_above' "
                                          "\\(10\\) must satisfy"):
        evaluate_checkpoint(path, data_overrides=["data.long_tail.head_above=10", "data.long_tail.tail_below=50"],
                            out_dir=tmp_path / "bad", progress=False)


def test_without_a_train_split_the_groups_are_skipped_with_a_note(run):
    path, tmp_path = run
    report = evaluate_checkpoint(path, data_overrides=["data.train=missing.csv"], out_dir=tmp_path / "out",
                                 progress=False)
    assert set(report["long_tail"]) == {"skipped"}
    assert report["long_tail"]["skipped"].startswith("train split unavailable, no head/medium/tail groups")
    assert "missing.csv" in report["long_tail"]["skipped"]
    assert report["frequency_plot"].startswith("skipped: train split unavailable")
    assert not (tmp_path / "out" / "accuracy_vs_frequency.png").exists()
    _, *per_class = read_rows(tmp_path / "out" / "per_class.csv")
    assert [r[4] for r in per_class] == ["", "", ""]
    assert report["top1"] >= 0 and report["num_samples"] == len(TEST_LABELS)  # the rest of the report is there


def test_ece_of_an_uncalibrated_checkpoint_from_the_written_predictions(run):
    path, tmp_path = run
    report = evaluate_checkpoint(path, out_dir=tmp_path / "out", progress=False)
    _, *rows = read_rows(tmp_path / "out" / "predictions.csv")
    # ECE needs only each image's confidence and whether it was right: 15 bins (b/15, (b+1)/15].
    confidence = np.array([float(r[5]) for r in rows])
    right = np.array([r[1] == r[3] for r in rows])
    bins = np.clip(np.ceil(confidence * 15).astype(int) - 1, 0, 14)
    ece = sum(abs(right[bins == b].mean() - confidence[bins == b].mean()) * (bins == b).sum()
              for b in range(15) if (bins == b).any()) / len(rows)
    assert report["ece"] == pytest.approx(100 * ece, abs=1e-3)  # the CSV keeps 6 decimals
    assert report["nll"] > 0 and report["temperature"] is None
    # What `predict --unknown-below t` would do on this split, from the same columns.
    assert [a["threshold"] for a in report["unknown_below"]] == [0.3, 0.5, 0.7, 0.9]
    for rule in report["unknown_below"]:
        answered = confidence >= rule["threshold"]
        assert rule["answered"] == pytest.approx(100 * answered.mean())
        expected = 100 * right[answered].mean() if answered.any() else None
        assert rule["accuracy_answered"] == pytest.approx(expected)
    assert len({a["answered"] for a in report["unknown_below"]}) > 1  # the thresholds matter here
    assert "ece_calibrated" not in report and "nll_calibrated" not in report
    with Image.open(tmp_path / "out" / "reliability.png") as image:
        assert image.format == "PNG" and image.size[1] > 100

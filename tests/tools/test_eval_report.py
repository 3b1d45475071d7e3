import csv
import dataclasses
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import AotEagerCompiler
from fgir.config import Config, ConfigError, DataConfig, ModelConfig
from fgir.data import ImageReadError, build_transform, read_image
from fgir.engine.checkpoint import save_checkpoint
from fgir.methods import build_model
from fgir.tools import eval_report
from fgir.tools.eval_report import evaluate_checkpoint

CLASS_NAMES = ["alpha", "beta", "gamma"]
# Class 2 has no test image: its accuracy is undefined and must not count in the class mean.
TEST_LABELS = [0, 0, 0, 1, 1, 0, 1, 1, 0]
REPORT_FILES = {"metrics.json", "predictions.csv", "confusion.csv", "per_class.csv", "confusion.png",
                "accuracy_vs_frequency.png", "reliability.png"}


def tiny_config(root) -> Config:
    data = DataConfig(name="toy", format="csv", root=str(root), image_dir=".", train="train.csv", val=None,
                      test="test.csv", num_classes=3, image_size=32, resize_ratio=1.125, eval_batch_size=4,
                      num_workers=0)
    model = ModelConfig(method="vit", backbone="vit_tiny_patch16_224", pretrained=False,
                        backbone_args={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2})
    return Config(data=data, model=model)


def write_split(root, name, labels, rng):
    root.mkdir(parents=True, exist_ok=True)
    lines = ["class_id,dir"]
    for i, label in enumerate(labels):
        relative = f"images/{name}_{i}.png"
        (root / "images").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(root / relative)
        lines.append(f"{label},{relative}")
    (root / f"{name}.csv").write_text("\n".join(lines) + "\n")


def random_head_model(config, num_classes=3):
    """The head is zero-initialised (uniform predictions); random weights give varied predictions."""
    torch.manual_seed(0)
    model = build_model(config.model, num_classes, config.data.image_size, pretrained=False).eval()
    torch.nn.init.normal_(model.head.weight, std=3.0)
    return model


@pytest.fixture
def run(tmp_path):
    """A run directory holding a checkpoint, and the toy dataset it refers to."""
    rng = np.random.default_rng(0)
    root = tmp_path / "toy"
    write_split(root, "train", [0, 1, 2], rng)
    write_split(root, "test", TEST_LABELS, rng)
    config = tiny_config(root)
    model = random_head_model(config)
    path = save_checkpoint(tmp_path / "run" / "checkpoints" / "best.safetensors", model, config, CLASS_NAMES,
                           epoch=3, global_step=30)
    return path, model, config


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_report_files_agree_with_an_independent_recomputation(run):
    path, model, config = run
    report = evaluate_checkpoint(path.parent.parent, progress=False)  # a run directory resolves to best

    out = path.parent.parent / "eval-test"
    assert {p.name for p in out.iterdir()} == REPORT_FILES  # nothing half-written left behind

    # predictions.csv: dataset order, and the model's own answer on each transformed image.
    header, *rows = read_rows(out / "predictions.csv")
    assert header == ["path", "label", "label_name", "prediction", "prediction_name", "probability"]
    root = Path(config.data.root)
    listed = [line.split(",")[1] for line in (root / "test.csv").read_text().split()[1:]]
    assert [r[0] for r in rows] == [os.path.abspath(root / relative) for relative in listed]
    transform = build_transform(config.data, train=False)
    with torch.no_grad():
        probs = model(torch.stack([transform(read_image(r[0])) for r in rows])).softmax(dim=1)
    labels = [int(r[1]) for r in rows]
    predicted = [int(r[3]) for r in rows]
    assert labels == TEST_LABELS
    assert predicted == probs.argmax(dim=1).tolist()
    assert [r[2] for r in rows] == [CLASS_NAMES[i] for i in labels]
    assert [r[4] for r in rows] == [CLASS_NAMES[i] for i in predicted]
    assert np.allclose([float(r[5]) for r in rows], probs.max(dim=1).values.numpy(), atol=1e-5)
    assert len(set(predicted)) > 1 and 0 < sum(p == t for p, t in zip(predicted, labels, strict=True)) < len(labels)

    # metrics.json from the rows.
    pairs = Counter(zip(labels, predicted, strict=True))
    accuracy = {c: 100 * pairs[c, c] / labels.count(c) for c in set(labels)}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == report
    assert metrics["top1"] == pytest.approx(100 * sum(pairs[c, c] for c in range(3)) / len(rows))
    assert metrics["top5"] == pytest.approx(100.0)  # 3 classes: every label is in the top 5
    assert metrics["mean_class_acc"] == pytest.approx(np.mean(list(accuracy.values())))
    assert metrics["std_class_acc"] == pytest.approx(np.std(list(accuracy.values())))
    assert (metrics["num_samples"], metrics["split"], metrics["epoch"]) == (len(rows), "test", 3)
    assert metrics["checkpoint"] == str(path.resolve()) and metrics["confusion_plot"] == "confusion.png"

    # confusion.csv: named rows and columns, every (true, predicted) count.
    header, *matrix = read_rows(out / "confusion.csv")
    assert header[1:] == CLASS_NAMES and [r[0] for r in matrix] == CLASS_NAMES
    counts = [[int(v) for v in r[1:]] for r in matrix]
    assert counts == [[pairs[t, p] for p in range(3)] for t in range(3)]
    assert sum(map(sum, counts)) == len(rows)

    # per_class.csv: support and accuracy (%), empty for the class without test images.
    header, *per_class = read_rows(out / "per_class.csv")
    assert header == ["class_id", "class_name", "support", "accuracy", "train_count"]
    assert [(int(r[0]), r[1], int(r[2])) for r in per_class] == [(c, CLASS_NAMES[c], labels.count(c)) for c in range(3)]
    assert [float(r[3]) for r in per_class[:2]] == pytest.approx([accuracy[0], accuracy[1]])
    assert per_class[2][3] == ""

    with Image.open(out / "confusion.png") as image:
        assert image.format == "PNG" and min(image.size) > 100


def test_dataset_elsewhere_through_data_overrides(run, tmp_path):
    path, _, config = run
    moved = tmp_path / "moved"
    shutil.move(config.data.root, moved)
    with pytest.raises(ConfigError, match="not found"):
        evaluate_checkpoint(path, progress=False)

    by_items = evaluate_checkpoint(path, data_overrides=[f"data.root={moved}"], out_dir=tmp_path / "a",
                                   progress=False)
    by_config = evaluate_checkpoint(path, data_overrides=dataclasses.replace(config.data, root=str(moved)),
                                    out_dir=tmp_path / "b", progress=False)
    assert by_items["data_root"] == by_config["data_root"] == str(moved.resolve())
    assert by_items["top1"] == by_config["top1"] and by_items["num_samples"] == len(TEST_LABELS)
    header, *rows = read_rows(tmp_path / "a" / "predictions.csv")
    assert all(r[0].startswith(str(moved)) for r in rows)


def test_overrides_must_be_known_data_keys(run):
    path, _, _ = run
    with pytest.raises(ConfigError, match="only data.* keys .* model.backbone=vit_base"):
        evaluate_checkpoint(path, data_overrides=["model.backbone=vit_base"], progress=False)
    with pytest.raises(ConfigError, match="unknown config key 'data.rot'.*did you mean 'data.root'"):
        evaluate_checkpoint(path, data_overrides=["data.rot=/x"], progress=False)


def test_class_count_mismatch_names_both_counts_and_writes_nothing(run, tmp_path):
    _, _, config = run
    four = save_checkpoint(tmp_path / "four.safetensors", random_head_model(config, 4), config,
                           [*CLASS_NAMES, "delta"], epoch=1, global_step=1)
    with pytest.raises(ConfigError, match="predicts 4 classes but dataset 'toy'.* has 3"):
        evaluate_checkpoint(four, progress=False)
    assert not (tmp_path / "eval-test").exists()


def test_image_size_of_the_override_must_match_the_model(run):
    path, _, _ = run
    with pytest.raises(ConfigError, match="image_size=64 .* trained at 32 px"):
        evaluate_checkpoint(path, data_overrides=["data.image_size=64"], progress=False)


def test_heat_map_is_skipped_for_many_classes(run, tmp_path, monkeypatch):
    path, _, _ = run
    monkeypatch.setattr(eval_report, "MAX_PLOT_CLASSES", 2)
    report = evaluate_checkpoint(path, out_dir=tmp_path / "out", progress=False)
    assert report["confusion_plot"].startswith("skipped: 3 classes > 2")
    assert {p.name for p in (tmp_path / "out").iterdir()} == REPORT_FILES - {"confusion.png"}


def test_skip_lists_unreadable_images_and_scores_the_rest(run, tmp_path, capsys):
    path, _, config = run
    broken = tmp_path / "toy" / "images" / "test_4.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="test_4.png"):
        evaluate_checkpoint(path, out_dir=tmp_path / "fail", progress=False)

    report = evaluate_checkpoint(path, data_overrides=["data.on_error=skip"], out_dir=tmp_path / "skip",
                                 progress=False)
    assert report["num_samples"] == len(TEST_LABELS) - 1
    assert len(report["skipped_images"]) == 1 and str(broken) in report["skipped_images"][0]
    assert "test: 1 unreadable images skipped, 8 scored" in capsys.readouterr().out
    with open(tmp_path / "skip" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    scored = [row["path"].rsplit("/", 1)[1] for row in rows]
    assert scored == [f"test_{i}.png" for i in range(len(TEST_LABELS)) if i != 4]
    assert [int(row["label"]) for row in rows] == [label for i, label in enumerate(TEST_LABELS) if i != 4]


def test_compiled_evaluation_scores_the_same(run, tmp_path, monkeypatch):
    import fgir.tools.scoring as scoring

    compiler = AotEagerCompiler()
    monkeypatch.setattr(scoring, "compile_model", compiler)
    path, _, _ = run
    plain = evaluate_checkpoint(path, out_dir=tmp_path / "plain", progress=False)
    compiled = evaluate_checkpoint(path, out_dir=tmp_path / "compiled", progress=False, compile=True)
    assert compiler.frozen_weights == [True]
    assert compiled["top1"] == plain["top1"] and compiled["num_samples"] == plain["num_samples"]
    assert (tmp_path / "compiled" / "predictions.csv").read_text() == (tmp_path / "plain" / "predictions.csv").read_text()

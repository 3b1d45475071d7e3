import csv
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fgir.config import ConfigError, DataConfig, SyntheticConfig
from fgir.data import synthetic
from fgir.data.synthetic import (
    GLYPH_SCALE,
    INK,
    PAPER,
    SHAPES,
    Box,
    ensure_synthetic,
    generate,
    paint_badge,
    render_sample,
)

TINY = SyntheticConfig(seed=3, num_classes=4, train_per_class=3, val_per_class=1, test_per_class=2, image_size=32)


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_same_seed_gives_identical_files(tmp_path):
    generate(TINY, tmp_path / "a")
    generate(TINY, tmp_path / "b")
    for name in ["train.csv", "val.csv", "test.csv", "train_val.csv", "classid_classname.csv", "manifest.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for row in read_rows(tmp_path / "a" / "train.csv"):
        a = np.asarray(Image.open(tmp_path / "a" / row["dir"]))
        np.testing.assert_array_equal(a, np.asarray(Image.open(tmp_path / "b" / row["dir"])))


def test_different_seed_gives_different_images():
    first, _ = render_sample(TINY, "train", 0, 0)
    other, _ = render_sample(dataclasses.replace(TINY, seed=4), "train", 0, 0)
    assert not np.array_equal(first, other)
    # Splits and indices have their own streams too.
    assert not np.array_equal(first, render_sample(TINY, "test", 0, 0)[0])
    assert not np.array_equal(first, render_sample(TINY, "train", 0, 1)[0])


def test_counts_per_split_and_class(tmp_path):
    generate(TINY, tmp_path)
    for split, per_class in [("train", 3), ("val", 1), ("test", 2)]:
        rows = read_rows(tmp_path / f"{split}.csv")
        assert list(rows[0]) == ["class_id", "dir", "x0", "y0", "x1", "y1"]
        labels = [int(r["class_id"]) for r in rows]
        assert np.bincount(labels).tolist() == [per_class] * 4
        assert all((tmp_path / r["dir"]).is_file() for r in rows)
    train_val = read_rows(tmp_path / "train_val.csv")
    assert train_val == read_rows(tmp_path / "train.csv") + read_rows(tmp_path / "val.csv")
    names = read_rows(tmp_path / "classid_classname.csv")
    assert [r["class_id"] for r in names] == ["0", "1", "2", "3"]
    assert all((tmp_path / "images" / r["class_name"]).is_dir() for r in names)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["config"] == dataclasses.asdict(TINY)


def test_boxes_lie_inside_and_have_the_planned_scale(tmp_path):
    generate(TINY, tmp_path)
    for row in read_rows(tmp_path / "train_val.csv") + read_rows(tmp_path / "test.csv"):
        x0, y0, x1, y1 = (int(row[k]) for k in ["x0", "y0", "x1", "y1"])
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
        assert x1 - x0 == y1 - y0
        assert GLYPH_SCALE[0] * 32 - 1 <= x1 - x0 <= GLYPH_SCALE[1] * 32 + 1


def test_glyph_is_the_only_difference_and_sits_in_its_box():
    with_glyph, box = render_sample(TINY, "train", 2, 5)
    without, same_box = render_sample(TINY, "train", 2, 5, with_glyph=False)
    assert box == same_box
    outside = np.ones(with_glyph.shape[:2], bool)
    outside[box.y0 : box.y1, box.x0 : box.x1] = False
    np.testing.assert_array_equal(with_glyph[outside], without[outside])
    assert not np.array_equal(with_glyph[~outside], without[~outside])


def test_classes_differ_only_inside_the_box_at_the_same_placement():
    canvas = Image.new("RGB", (40, 40), (128, 128, 128))
    box = Box(5, 7, 25, 27)
    renders = [np.asarray(paint_badge(canvas, shape, box)) for shape in SHAPES]
    inside = np.zeros((40, 40), bool)
    inside[box.y0 : box.y1, box.x0 : box.x1] = True
    for i in range(len(SHAPES)):
        np.testing.assert_array_equal(renders[i][~inside], np.asarray(canvas)[~inside])
        for j in range(i):
            assert not np.array_equal(renders[i][inside], renders[j][inside]), (SHAPES[i], SHAPES[j])
    # The badge is paper at its border (the margin) and holds ink inside.
    badge = renders[0][box.y0 : box.y1, box.x0 : box.x1]
    for side in (badge[0], badge[-1], badge[:, 0], badge[:, -1]):
        assert (side == PAPER).all()
    assert (badge == INK).all(-1).any()


@pytest.mark.parametrize("shape", SHAPES)
def test_a_mirrored_badge_is_the_same_class(shape):
    # A horizontal flip (a training augmentation) must not turn one class into another.
    canvas = Image.new("RGB", (32, 32), (128, 128, 128))
    badge = np.asarray(paint_badge(canvas, shape, Box(0, 0, 32, 32)))
    assert mirror_mismatch(badge) < 0.05  # a few edge pixels rounded differently by the rasteriser


def mirror_mismatch(image: np.ndarray) -> float:
    return float((image != image[:, ::-1]).any(-1).mean())


def test_the_mirror_check_catches_an_asymmetric_shape():
    image = Image.new("RGB", (32, 32), PAPER)
    ImageDraw.Draw(image).polygon([(6, 6), (25, 16), (6, 25)], fill=INK)  # a triangle pointing right
    assert mirror_mismatch(np.asarray(image)) > 0.15


def test_too_many_classes_is_refused(tmp_path):
    config = dataclasses.replace(TINY, num_classes=len(SHAPES) + 1)
    with pytest.raises(ConfigError, match=r"data.synthetic.num_classes must be in \[2, 10\], got 11"):
        ensure_synthetic(data_config(tmp_path / "set", config))


def data_config(root, synthetic_config=TINY) -> DataConfig:
    return DataConfig(root=str(root), synthetic=synthetic_config)


def test_ensure_returns_a_csv_config(tmp_path):
    data = ensure_synthetic(data_config(tmp_path / "syn"))
    assert (data.format, data.image_dir, data.class_names, data.num_classes) == (
        "csv",
        ".",
        "classid_classname.csv",
        4,
    )
    assert data.root == str(tmp_path / "syn")


def test_ensure_generates_once_and_then_reads_the_set_in_place(tmp_path):
    root = tmp_path / "syn"
    ensure_synthetic(data_config(root))
    marker = root / "marker"
    marker.write_text("kept while the set is current")
    ensure_synthetic(data_config(root))
    assert marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]  # no staging folder left


def test_a_set_generated_with_other_parameters_is_refused_not_replaced(tmp_path):
    root = tmp_path / "syn"
    ensure_synthetic(data_config(root))
    before = (root / "train.csv").read_bytes()
    changed = dataclasses.replace(TINY, train_per_class=5, seed=4)
    with pytest.raises(ConfigError, match=rf"data.root '{root}' holds a synthetic set generated with other "
                                          r"parameters \(data.synthetic.seed=3 there, 4 here; "
                                          r"data.synthetic.train_per_class=3 there, 5 here\); it is not replaced"):
        ensure_synthetic(data_config(root, changed))
    assert (root / "train.csv").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]


def test_a_set_of_another_generator_version_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "syn"
    ensure_synthetic(data_config(root))
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    with pytest.raises(ConfigError, match=f"generator version {synthetic.GENERATOR_VERSION - 1} there, "
                                          f"{synthetic.GENERATOR_VERSION} in this fgir"):
        ensure_synthetic(data_config(root))


def test_an_empty_folder_is_filled(tmp_path):
    (tmp_path / "syn").mkdir()
    ensure_synthetic(data_config(tmp_path / "syn"))
    assert len(read_rows(tmp_path / "syn" / "train.csv")) == 12


def test_interrupted_generation_leaves_nothing_half_done(tmp_path, monkeypatch):
    calls = []

    def failing_render(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return render_sample(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_sample", failing_render)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(data_config(tmp_path / "fresh"))
    assert list(tmp_path.iterdir()) == []  # neither the set nor a staging folder


def test_foreign_folder_is_not_overwritten(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(ConfigError, match="is not empty and holds no synthetic set"):
        ensure_synthetic(data_config(tmp_path))
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_bad_synthetic_config_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data.synthetic.num_classes must be in \[2, "):
        ensure_synthetic(data_config(tmp_path / "x", dataclasses.replace(TINY, num_classes=1)))
    with pytest.raises(ConfigError, match="data.synthetic.val_per_class must be >= 1"):
        ensure_synthetic(data_config(tmp_path / "x", dataclasses.replace(TINY, val_per_class=0)))

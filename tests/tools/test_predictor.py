import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import fgir
from fgir.cli import main
from fgir.config import Config, DataConfig, ModelConfig
from fgir.data import ImageReadError, build_transform, read_image
from fgir.engine.checkpoint import save_checkpoint
from fgir.methods import build_model
from fgir.tools.predictor import ClassScore, Prediction, Predictor, format_predictions

CLASS_NAMES = ["alpha", "beta", "gamma", "delta"]


def tiny_config(root) -> Config:
    data = DataConfig(name="toy", format="csv", root=str(root), num_classes=4, image_size=32, resize_ratio=1.25)
    model = ModelConfig(method="vit", backbone="vit_tiny_patch16_224", pretrained=False,
                        backbone_args={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2})
    return Config(data=data, model=model)


@pytest.fixture
def trained(tmp_path):
    """A checkpoint whose dataset folder no longer exists, the model it holds, and its config."""
    dataset_root = tmp_path / "dataset"
    dataset_root.mkdir()
    config = tiny_config(dataset_root)
    torch.manual_seed(0)
    model = build_model(config.model, len(CLASS_NAMES), config.data.image_size, pretrained=False).eval()
    torch.nn.init.normal_(model.head.weight, std=3.0)  # the zero-initialised head would predict uniformly
    path = save_checkpoint(tmp_path / "model.safetensors", model, config, CLASS_NAMES, epoch=1, global_step=1)
    shutil.rmtree(dataset_root)
    return path, model, config


@pytest.fixture
def photos(tmp_path):
    """A folder of images in a sub-folder too, with files that are not images."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.png", "a.jpg", "sub/c.png"):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "._a.jpg").write_bytes(b"macOS resource fork")
    return folder


def reference_probabilities(model, config, paths):
    transform = build_transform(config.data, train=False)
    with torch.no_grad():
        return model(torch.stack([transform(read_image(p)) for p in paths])).softmax(dim=1)


def test_predictions_equal_the_model_on_the_test_transform(trained, photos):
    path, model, config = trained
    predictor = Predictor.from_checkpoint(path, device="cpu")
    assert predictor.class_names == CLASS_NAMES
    files = [photos / "a.jpg", photos / "b.png", photos / "sub/c.png"]
    predictions = predictor.predict(files, topk=2)

    expected = reference_probabilities(model, config, files)
    assert [p.image for p in predictions] == [str(f) for f in files]
    for prediction, probs in zip(predictions, expected, strict=True):
        top = probs.topk(2)
        assert [s.class_id for s in prediction.topk] == top.indices.tolist()
        assert [s.class_name for s in prediction.topk] == [CLASS_NAMES[i] for i in top.indices]
        assert [s.probability for s in prediction.topk] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert expected.std(dim=1).min() > 0.01  # not the uniform answer of an untrained head


def test_pil_images_folders_and_batches_give_the_same_answers(trained, photos):
    path, _, _ = trained
    by_folder = Predictor.from_checkpoint(path, device="cpu", batch_size=2).predict(photos, topk=4)
    assert [p.image for p in by_folder] == [str(photos / n) for n in ("a.jpg", "b.png", "sub/c.png")]

    with Image.open(photos / "b.png") as image:
        in_memory = fgir.load(path, device="cpu").predict([image.convert("L").convert("RGB"), image.copy()], topk=4)
    assert [p.image for p in in_memory] == ["<image 0>", "<image 1>"]
    # A PIL image is classified exactly as the same file given by path.
    assert [s.class_id for s in in_memory[1].topk] == [s.class_id for s in by_folder[1].topk]
    assert [s.probability for s in in_memory[1].topk] == pytest.approx([s.probability for s in by_folder[1].topk])

    single = Predictor.from_checkpoint(path, device="cpu").predict(photos / "sub/c.png", topk=4)
    assert [s.class_id for s in single[0].topk] == [s.class_id for s in by_folder[2].topk]
    assert [s.probability for s in single[0].topk] == pytest.approx([s.probability for s in by_folder[2].topk])


def test_probabilities_are_sorted_and_topk_is_capped(trained, photos):
    predictor = fgir.load(trained[0], device="cpu")
    for topk, size in ((1, 1), (3, 3), (10, 4)):
        for prediction in predictor.predict(photos, topk=topk):
            probabilities = [s.probability for s in prediction.topk]
            assert len(probabilities) == size and probabilities == sorted(probabilities, reverse=True)
            assert sum(probabilities) <= 1 + 1e-6
    assert sum(s.probability for s in prediction.topk) == pytest.approx(1.0, abs=1e-5)  # all 4 classes
    with pytest.raises(ValueError, match="topk must be >= 1"):
        predictor.predict(photos, topk=0)


def test_bad_inputs_name_the_path(trained, tmp_path):
    predictor = fgir.load(trained[0], device="cpu")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageReadError, match="broken.png"):
        predictor.predict(broken)
    with pytest.raises(ImageReadError, match="missing.jpg"):
        predictor.predict(tmp_path / "missing.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files .* in folder .*empty"):
        predictor.predict(tmp_path / "empty")


@pytest.fixture
def photos_with_bad_files(photos):
    """The photos folder plus a truncated PNG and an empty JPEG between the good images."""
    (photos / "a2.png").write_bytes((photos / "b.png").read_bytes()[:60])
    (photos / "b2.jpg").write_bytes(b"")
    return photos


def test_a_folder_with_unreadable_files_predicts_the_others(trained, photos_with_bad_files):
    photos = photos_with_bad_files
    predictor = Predictor.from_checkpoint(trained[0], device="cpu", batch_size=2)
    with pytest.raises(ImageReadError, match="a2.png"):
        predictor.predict(photos)  # on_error="fail" by default

    predictions = predictor.predict(photos, topk=2, on_error="skip")
    assert [p.image for p in predictions] == [str(photos / n) for n in ("a.jpg", "a2.png", "b.png", "b2.jpg", "sub/c.png")]
    failed = {p.image: p for p in predictions if p.error is not None}
    assert list(failed) == [str(photos / "a2.png"), str(photos / "b2.jpg")]
    assert all(p.topk == [] for p in failed.values())
    assert failed[str(photos / "b2.jpg")].error == f"cannot read image {photos / 'b2.jpg'}: file is empty (0 bytes)"
    clean = predictor.predict([photos / "a.jpg", photos / "b.png", photos / "sub/c.png"], topk=2)
    for got, want in zip([p for p in predictions if p.error is None], clean, strict=True):
        assert got.image == want.image and [s.class_id for s in got.topk] == [s.class_id for s in want.topk]
        assert [s.probability for s in got.topk] == pytest.approx([s.probability for s in want.topk], abs=1e-5)


def test_cli_predict_folder_names_each_failure_and_exits_1(trained, photos_with_bad_files, capsys):
    photos = photos_with_bad_files
    assert main(["predict", str(trained[0]), str(photos), "--device", "cpu", "--topk", "1"]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"fgir predict: error: cannot read image {photos / 'a2.png'}: OSError: image file is truncated",
                                f"fgir predict: error: cannot read image {photos / 'b2.jpg'}: file is empty (0 bytes)"]
    assert [line.split()[0] for line in out.splitlines()[1:]] == [str(photos / n) for n in ("a.jpg", "b.png", "sub/c.png")]

    assert main(["predict", str(trained[0]), str(photos), "--device", "cpu", "--json"]) == 1
    out, err = capsys.readouterr()
    decoded = json.loads(out)
    assert [d["image"] for d in decoded if d["error"]] == [str(photos / "a2.png"), str(photos / "b2.jpg")]
    assert [len(d["topk"]) for d in decoded] == [4, 0, 4, 0, 4] and len(err.splitlines()) == 2


def test_json_round_trips_and_table_lists_every_rank():
    predictions = [
        Prediction("dir/first.png", [ClassScore(2, "gamma", 0.875), ClassScore(0, "alpha", 0.0625)]),
        Prediction("<image 1>", [ClassScore(1, "a long class name", 0.5), ClassScore(3, "delta", 0.25)]),
    ]
    decoded = json.loads(format_predictions(predictions, as_json=True))
    assert decoded == [p.to_dict() for p in predictions]
    assert [Prediction(d["image"], [ClassScore(**s) for s in d["topk"]]) for d in decoded] == predictions

    lines = format_predictions(predictions).splitlines()
    assert lines[0].split() == ["image", "rank", "class", "probability"]
    assert lines[1].split() == ["dir/first.png", "1", "gamma", "87.50%"]
    assert lines[2].split() == ["2", "alpha", "6.25%"]
    assert lines[3].split() == ["<image", "1>", "1", "a", "long", "class", "name", "50.00%"]
    assert len(lines) == 5
    assert len({line.index("%") for line in lines[1:]}) == 1  # probabilities right-aligned in one column


@pytest.mark.slow
def test_compiled_predictor_gives_the_same_answers(trained, photos):
    # Real inductor compilation with frozen weights (`fgir predict --compile`): one static graph per
    # batch size, here 2 and then the remaining 1.
    path, _, _ = trained
    files = [photos / "a.jpg", photos / "b.png", photos / "sub/c.png"]
    expected = Predictor.from_checkpoint(path, device="cpu", batch_size=2).predict(files, topk=3)
    compiled = Predictor.from_checkpoint(path, device="cpu", batch_size=2, compile=True)
    assert compiled.model._compiled_call_impl is not None
    for got, want in zip(compiled.predict(files, topk=3), expected, strict=True):
        assert [s.class_id for s in got.topk] == [s.class_id for s in want.topk]
        assert [s.probability for s in got.topk] == pytest.approx([s.probability for s in want.topk], abs=1e-5)

"""The dataset.yaml that `fgir data cache` writes says where the data is and nothing else: a recipe
that includes it after its own files keeps its image size, augmentation, normalisation and batch."""

from pathlib import Path

import yaml
from PIL import Image

from fgir.config import load_config, to_dict
from fgir.data.cache import LOCATION_KEYS, cache_dataset

RECIPE = "moeimouto/animesion_vit_b16"  # 128 px, mean 0.5, batch 16


def write_dataset(root: Path) -> Path:
    """A two-class CSV dataset and its dataset file (location keys only, as `fgir data prepare` writes)."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(4):
        Image.new("RGB", (300, 200), (60 * i, 90, 180)).save(root / "images" / f"{i}.jpg")
        rows.append(f"{i % 2},{i}.jpg")
    for split in ("train", "val", "test"):
        (root / f"{split}.csv").write_text("class_id,dir\n" + "\n".join(rows) + "\n")
    (root / "dataset.yaml").write_text(yaml.safe_dump({"data": {
        "name": "mini", "format": "csv", "root": str(root), "image_dir": "images", "num_classes": 2}}))
    return root / "dataset.yaml"


def test_the_cache_dataset_file_holds_location_keys_only(tmp_path):
    result = cache_dataset(load_config(write_dataset(tmp_path / "src")).data, tmp_path / "cache", workers=1,
                           progress=False)
    data = yaml.safe_load(result.config_path.read_text())
    assert list(data) == ["data"] and set(data["data"]) == set(LOCATION_KEYS)
    assert data["data"]["image_dir"] == str(tmp_path / "cache" / "images")


def test_a_recipe_that_includes_the_cache_after_its_own_files_keeps_its_values(tmp_path):
    # The cache of the bare dataset (schema defaults: 224 px, ImageNet statistics, batch 8) ...
    result = cache_dataset(load_config(write_dataset(tmp_path / "src")).data, tmp_path / "cache", workers=1,
                           progress=False)
    # ... included after an Animesion recipe, in place of its dataset.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"include": [RECIPE, str(result.config_path)]}))
    composed, original = to_dict(load_config(recipe)), to_dict(load_config(RECIPE))
    cached = yaml.safe_load(result.config_path.read_text())["data"]
    for section in ("model", "train"):
        assert composed[section] == original[section]
    for key, value in original["data"].items():
        assert composed["data"][key] == (cached[key] if key in LOCATION_KEYS else value), key
    assert original["data"]["image_size"] != 224 and original["data"]["batch_size"] != 8  # the trap this guards

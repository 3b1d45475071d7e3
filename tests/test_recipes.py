from pathlib import Path

import pytest

from fgir.config import load_config
from fgir.data.transforms import resize_size

ROOT = Path(__file__).parents[1] / "configs"
CONFIGS = sorted(ROOT.rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_shipped_recipe_loads_and_validates(path):
    load_config(path)


def test_glsim_and_vit_recipes_differ_only_in_the_method():
    vit, glsim = load_config(ROOT / "cub/vit.yaml"), load_config(ROOT / "cub/glsim.yaml")
    assert vit.data == glsim.data and vit.train == glsim.train
    assert (vit.model.method, glsim.model.method) == ("vit", "glsim")
    assert load_config(ROOT / "dogs/glsim.yaml").model.glsim.top_o == 16  # the paper doubles O for Dogs
    assert load_config(ROOT / "cub/glsim_448.yaml").data.image_size == 448


ANIMESION = sorted(p for d in ("dafre_faces", "dafb", "moeimouto") for p in (ROOT / d).glob("animesion_*.yaml"))


@pytest.mark.parametrize("path", ANIMESION, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_animesion_recipes_follow_the_paper(path):
    config = load_config(path)
    name = path.stem
    assert (config.data.image_size, resize_size(config.data)) == ((224, 256) if "224" in name else (128, 160))
    assert config.data.batch_size == (64 if "bs64" in name else 16)
    assert (config.train.optimizer, config.train.lr, config.train.momentum, config.train.warmup_steps) == ("sgd", 1e-3, 0.9, 1000)
    assert config.data.mean == config.data.std == [0.5, 0.5, 0.5]
    assert config.model.method == ("cnn" if "resnet" in name else "vit_ifa" if "ifa" in name else "vit")
    assert config.data.name == path.parent.name


def test_animesion_recipe_set_is_complete():
    names = {p.stem for p in (ROOT / "dafre_faces").glob("animesion_*.yaml")}
    for vit in ("b16", "b32", "l16", "l32"):
        assert {f"animesion_vit_{vit}{suffix}" for suffix in ("", "_224", "_bs64", "_ifa", "_ifa_224")} <= names
    assert {"animesion_resnet18", "animesion_resnet50", "animesion_resnet152"} <= names
    for dataset in ("dafb", "moeimouto"):
        assert {p.stem for p in (ROOT / dataset).glob("animesion_*.yaml")} == names

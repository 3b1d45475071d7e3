from pathlib import Path

import pytest

from fgir.config import load_config

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

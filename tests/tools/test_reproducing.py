"""docs/reproducing.md: written by fgir.tools.reproducing, one row per published number, each row's
fgir recipe training the published row's dataset, method, backbone, size and setting."""

from pathlib import Path

import pytest

from fgir.config import load_config
from fgir.tools.paper_tables import PAPER_RESULTS
from fgir.tools.reproducing import reproducing_markdown, reproducing_rows, setting_of

PAGE = Path(__file__).parents[2] / "docs" / "reproducing.md"
ROWS = reproducing_rows()


def test_the_page_is_what_the_module_writes_with_a_row_per_published_number():
    assert PAGE.read_text() == reproducing_markdown()  # regenerate: python -m fgir.tools.reproducing
    assert [row.paper for row in ROWS] == PAPER_RESULTS


@pytest.mark.parametrize("row", [row for row in ROWS if row.recipe], ids=lambda row: row.recipe)
def test_a_rows_recipe_trains_the_published_rows_kind_of_run(row):
    config, paper = load_config(row.recipe, row.overrides), row.paper
    assert (config.data.name, config.model.method, config.data.image_size) == (paper.dataset, paper.method,
                                                                                paper.image_size)
    section = getattr(config.model, paper.method, None)  # transfg and ffvt have a frozen switch
    frozen = setting_of(row.recipe) == "frozen" or bool(section is not None and getattr(section, "frozen", False))
    assert config.model.backbone.startswith(paper.backbone) and frozen == (paper.setting == "frozen")
    assert f"fgir train {' '.join([row.recipe, *row.overrides])}" in row.fgir


def test_the_rows_fgir_cannot_train_are_methods_or_settings_it_lacks():
    missing = {(row.paper.method, row.paper.setting) for row in ROWS if row.recipe is None}
    assert missing == {("csdnet", "full"), ("glsim", "frozen"), ("vit_ifa", "frozen")}
    assert sum(row.recipe is not None for row in ROWS) == len(ROWS) - 5 * 3  # 3 ILA rows of 5

"""The recipes shipped inside the package: names, composition, parity with the per-file recipes."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path

import pytest
import yaml

from fgir.cli import main
from fgir.config import Config, ConfigError, config_schema, load_config, to_dict
from fgir.config_inspect import schema_help
from fgir.data.transforms import resize_size
from fgir.recipes import (
    ROOT,
    deviation_names,
    is_recipe_name,
    method_names,
    recipe_files,
    variant_names,
)
from test_config_inspect import origins_printed

EXPECTED = json.loads((Path(__file__).parent / "fixtures/recipes_v1/expected.json").read_text())


def leaves(tree: dict, prefix: str = "") -> dict:
    if isinstance(tree, dict) and tree:
        return {key: value for name, sub in tree.items() for key, value in leaves(sub, f"{prefix}{name}.").items()}
    return {prefix.rstrip("."): tree}


@cache
def defaults(method: str) -> dict:
    """Every key's default in the schema of `method`, read from the schema itself: what a config
    leaves out is its default."""
    return {entry.key: yaml.safe_load(entry.default) for entry in schema_help(config_schema(method))
            if entry.type != "section"}


def non_default(config: Config) -> dict:
    """The dotted keys whose value differs from the schema default (how the fixture stores a recipe)."""
    known = defaults(config.model.method)
    return {key: value for key, value in leaves(to_dict(config)).items() if known.get(key, object()) != value}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_former_recipe_file_composes_the_same_config_by_name(name):
    assert non_default(load_config(name)) == EXPECTED[name]


def test_every_deviation_file_changes_what_its_recipe_would_be_without_it():
    # Only real deviations are files: leaving any one out changes its recipe's config.
    for name in deviation_names():
        files = recipe_files(name)
        without = [file for file in files if "deviations" not in file.parts]
        assert len(without) == len(files) - 1
        assert non_default(load_config(without)) != non_default(load_config(files)), name


# Methods that came after the per-file recipes: their files are checked by composing them below.
NEWER_METHODS = ("mpncov", "vqt", "transfg", "ffvt", "cal", "cal_resnet101")
METHOD_OF_RECIPE = {"cal_resnet101": "cal_cnn"}  # a recipe named after its network


def test_every_shipped_file_is_part_of_a_former_recipe_or_a_newer_method():
    # With the parity test above, every file loads and validates, and none is left over.
    used = {path for name in EXPECTED for path in recipe_files(name)}
    included = {ROOT / "augment/medium.yaml", ROOT / "common/peft.yaml", ROOT / "common/animesion.yaml"}
    newer = {ROOT / "methods" / f"{method}.yaml" for method in NEWER_METHODS}
    assert set(ROOT.rglob("*.yaml")) == used | included | newer


@pytest.mark.parametrize("method", NEWER_METHODS)
def test_a_newer_method_composes_with_a_dataset_and_a_size(method):
    config = load_config(f"cotton/{method}_448")
    expected = (METHOD_OF_RECIPE.get(method, method), "cotton", 448)
    assert (config.model.method, config.data.name, config.data.image_size) == expected


def test_pairs_the_papers_did_not_run_compose_too():
    assert load_config("cotton/glsim").data.augment == "weak"  # the dataset's augmentations
    ila = load_config("cub/ila_pp_448")  # the frozen-backbone protocol on a GLSim dataset
    assert (ila.data.augment, ila.model.drop_path, ila.train.lr, ila.data.image_size) == ("weak", 0.0, 0.1, 448)


def test_names_resolve_to_dataset_method_deviation_and_variants():
    def parts(name):
        return [str(path.relative_to(ROOT)) for path in recipe_files(name)]

    assert parts("cub/glsim") == ["datasets/cub.yaml", "methods/glsim.yaml"]
    assert parts("cub/glsim_448") == ["datasets/cub.yaml", "methods/glsim.yaml", "variants/448.yaml"]
    assert parts("dogs/glsim_448") == ["datasets/dogs.yaml", "methods/glsim.yaml", "deviations/dogs/glsim.yaml",
                                       "variants/448.yaml"]
    # The longest method name wins, and a method family's own variant before the generic one.
    assert parts("dafb/animesion_vit_b16_ifa_224") == [
        "datasets/dafb.yaml", "methods/animesion_vit_b16.yaml", "variants/animesion_vit_ifa.yaml",
        "variants/animesion_224.yaml"]
    assert variant_names("animesion_resnet18") == ["224", "448", "bs64"]  # the IFA head is for ViTs
    assert variant_names("glsim") == ["448"]
    assert is_recipe_name("cub/ila_pp_448") and not is_recipe_name("cub/glsim_224")


def test_recipes_of_one_dataset_differ_only_in_what_their_method_sets():
    vit, glsim = load_config("cub/vit"), load_config("cub/glsim")
    assert vit.data == glsim.data and vit.train == glsim.train
    assert (vit.model.method, glsim.model.method) == ("vit", "glsim")
    assert load_config("dogs/glsim").model.glsim.top_o == 16  # the paper doubles O for Dogs
    assert load_config("cub/glsim").model.glsim.top_o == 8
    assert load_config("cub/glsim_448").data.image_size == 448
    assert load_config("cub/vit").data.augment == "medium" and load_config("cotton/vit").data.augment == "weak"


ANIMESION = [f"{dataset}/{method}{variant}" for dataset in ("dafre_faces", "dafb", "moeimouto")
             for method in method_names() if method.startswith("animesion_")
             for variant in ("", "_224", "_bs64", "_ifa", "_ifa_224") if "resnet" not in method or not variant]


@pytest.mark.parametrize("name", ANIMESION)
def test_animesion_recipes_follow_the_paper(name):
    config = load_config(name)
    assert (config.data.image_size, resize_size(config.data)) == ((224, 256) if "224" in name else (128, 160))
    assert config.data.batch_size == (64 if "bs64" in name else 16)
    assert (config.train.optimizer, config.train.lr, config.train.momentum, config.train.warmup_steps) == ("sgd", 1e-3, 0.9, 1000)
    assert (config.data.augment, config.train.label_smoothing, config.model.drop_path) == ("weak", 0.0, 0.0)
    assert config.data.mean == config.data.std == [0.5, 0.5, 0.5]
    assert config.model.method == ("cnn" if "resnet" in name else "vit_ifa" if "ifa" in name else "vit")
    assert config.data.name == name.split("/")[0]


@pytest.mark.parametrize("name, message", [
    ("cubb/glsim", "no dataset 'cubb'; did you mean 'cub'"),
    ("cub/glsm", "no method 'glsm'; did you mean 'glsim'"),
    ("cub/glsim_449", "no variant '449' of method glsim; did you mean '448'"),
    ("glsim", "is neither a config file nor a recipe name"),
    ("methods/glsm", r"no file 'glsm' in methods/; did you mean 'glsim'"),
])
def test_an_unknown_name_is_an_error_naming_the_part_and_the_nearest_names(name, message):
    with pytest.raises(ConfigError, match=message):
        load_config(name)


def test_a_missing_yaml_path_is_a_missing_file_not_a_name(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "cub/glsim.yaml")


def test_several_sources_later_ones_win_and_a_file_may_include_a_name(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("include: [dogs/glsim]\ntrain:\n  lr: 0.02\n")
    config = load_config(["cub/vit", str(mine)], ["train.epochs=3"])
    assert (config.data.name, config.model.method, config.model.glsim.top_o) == ("dogs", "glsim", 16)
    assert (config.train.lr, config.train.epochs) == (0.02, 3)
    # cub/vit last makes the method vit, whose schema has no glsim section: the glsim keys an earlier
    # source set are refused, naming their owner, rather than silently dropped.
    with pytest.raises(ConfigError, match="'model.glsim' .* is an option of method glsim, not of model.method='vit'"):
        load_config([str(mine), "cub/vit"])
    assert load_config([str(mine), "cub/glsim"]).data.name == "cub"  # cub/glsim's files set it last


def test_a_part_alone_is_named_by_its_folder_to_go_with_a_dataset_file_of_one_s_own(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("data:\n  name: mine\n  num_classes: 5\n")
    config = load_config([str(mine), "methods/glsim", "variants/448"])
    assert (config.data.name, config.model.method, config.data.image_size) == ("mine", "glsim", 448)


def test_recipes_are_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("cub/glsim_448").data.image_size == 448


@pytest.mark.slow
def test_a_built_wheel_carries_the_recipes(tmp_path):
    # A non-editable install finds `cub/glsim` from any folder: build a wheel of a copy of the
    # source, unpack it and load a recipe from elsewhere with only the unpacked fgir importable.
    repo = Path(__file__).parents[1]
    source = tmp_path / "source"
    shutil.copytree(repo / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(repo / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("fgir-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.startswith("fgir/recipes/")}
        archive.extractall(tmp_path / "site")
    assert shipped == {f"fgir/{path.relative_to(ROOT.parent)}" for path in ROOT.rglob("*") if path.is_file()
                       and "__pycache__" not in path.parts}
    probe = ("import fgir.recipes; from fgir.config import load_config; "
             "print(fgir.recipes.ROOT, load_config('dogs/glsim_448').model.glsim.top_o)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}).stdout.split()
    assert out == [str(tmp_path / "site/fgir/recipes"), "16"]


def test_config_show_takes_several_sources_and_names_each_value_s_file(tmp_path, capsys):
    mine = tmp_path / "mine.yaml"
    mine.write_text("train:\n  lr: 0.2\n")
    assert main(["config", "show", "dogs/glsim_448", str(mine), "train.epochs=3"]) == 0
    origins = origins_printed(capsys.readouterr().out)
    assert origins["data.name"] == "fgir/recipes/datasets/dogs.yaml"
    assert origins["model.glsim.top_o"] == "fgir/recipes/deviations/dogs/glsim.yaml"
    assert origins["data.image_size"] == "fgir/recipes/variants/448.yaml"
    assert origins["data.augment"] == "fgir/recipes/augment/medium.yaml"  # included by the dataset file
    assert (origins["train.lr"], origins["train.epochs"]) == (str(mine), "command line")


def test_the_command_line_names_an_unknown_recipe_or_a_misplaced_one_in_one_line(capsys):
    assert main(["train", "cub/glsm", "train.epochs=1"]) == 2
    assert capsys.readouterr().err == ("fgir train: error: 'cub/glsm' is neither a config file nor a known "
                                       "recipe: no method 'glsm'; did you mean 'glsim', 'glsim_448'?\n")
    assert main(["config", "show", "train.epochs=1", "cub/glsim"]) == 2
    assert "'cub/glsim' comes after the key=value overrides" in capsys.readouterr().err


def test_fgir_recipes_lists_the_parts_of_the_names(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for dataset in ("cub", "dafre_faces", "soyageing_r1", "synthetic"):
        assert f" {dataset} " in out
    assert "variants:   224 448 bs64 ifa  (for animesion_vit_b16" in out
    assert "deviations: dogs/glsim" in out

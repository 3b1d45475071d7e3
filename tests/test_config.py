import pytest
import yaml

from fgir.config import ConfigError, load_config, save_config, to_dict


def write(path, tree):
    path.write_text(yaml.safe_dump(tree))
    return path


def test_defaults_follow_the_glsim_recipe():
    config = load_config()
    assert config.train.optimizer == "sgd" and config.train.nesterov
    assert (config.train.lr, config.train.warmup_steps, config.train.epochs) == (0.01, 500, 50)
    assert config.data.image_size == 224 and round(config.data.resize_ratio * 224) == 300


def test_include_composes_and_the_including_file_wins(tmp_path):
    write(tmp_path / "base.yaml", {"train": {"lr": 0.1, "epochs": 3}, "data": {"image_size": 64}})
    write(tmp_path / "other.yaml", {"train": {"epochs": 7}})
    top = write(tmp_path / "top.yaml", {"include": ["base.yaml", "other.yaml"], "train": {"lr": 0.5}})
    config = load_config(top)
    assert config.train.lr == 0.5  # the including file wins over its includes
    assert config.train.epochs == 7  # later include wins over earlier
    assert config.data.image_size == 64


def test_nested_include_paths_are_relative_to_the_including_file(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "leaf.yaml", {"model": {"backbone": "vit_small_patch16_224"}})
    write(tmp_path / "sub" / "mid.yaml", {"include": "leaf.yaml"})
    top = write(tmp_path / "top.yaml", {"include": ["sub/mid.yaml"]})
    assert load_config(top).model.backbone == "vit_small_patch16_224"


def test_command_line_wins_over_yaml(tmp_path):
    top = write(tmp_path / "top.yaml", {"train": {"lr": 0.5}, "data": {"image_size": 64}})
    config = load_config(top, ["train.lr=0.01", "data.image_size=448", "model.backbone_args={depth: 2}"])
    assert config.train.lr == 0.01 and config.data.image_size == 448
    assert config.model.backbone_args == {"depth": 2}


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=0.1", "unknown config key 'train.lrr' (command line 'train.lrr=0.1'); did you mean 'train.lr'?"),
        ("trian.lr=0.1", "did you mean 'train"),
        ("data.imagesize=3", "did you mean 'data.image_size'?"),
        ("train.lr=fast", "bad value for config key 'train.lr'"),
        ("train.epochs=2.5", "bad value for config key 'train.epochs'"),
        ("train.optimizer=adam", "must be one of sgd, adamw, got 'adam'; did you mean 'adamw'?"),
        ("train.lr=-1", "'train.lr' must be > 0, got -1"),
        ("data.augment=medum", "did you mean 'medium'?"),
        ("train.lr", "is not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    top = write(tmp_path / "top.yaml", {"model": {"backbon": "x"}})
    with pytest.raises(ConfigError, match=r"unknown config key 'model.backbon' \(.*top.yaml\); did you mean 'model.backbone'"):
        load_config(top)


def test_include_cycle_and_missing_file_are_errors(tmp_path):
    write(tmp_path / "a.yaml", {"include": "b.yaml"})
    write(tmp_path / "b.yaml", {"include": "a.yaml"})
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_loads_back_identically(tmp_path):
    config = load_config(None, ["train.lr=0.123", "data.mean=[0.5,0.5,0.5]", "model.backbone_args={depth: 3}"])
    save_config(config, tmp_path / "config.yaml")
    assert to_dict(load_config(tmp_path / "config.yaml")) == to_dict(config)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


@pytest.mark.parametrize("key", ["model.name", "model.arch", "model.model"])
def test_names_users_try_for_the_backbone_point_at_model_backbone(key):
    with pytest.raises(ConfigError, match=rf"unknown config key '{key}' .*; did you mean 'model.backbone'\?$"):
        load_config(None, [f"{key}=vit_tiny_patch16_224"])

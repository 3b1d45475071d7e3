"""`fgir config show` (the resolved config with the origin of each value) and `fgir config keys`."""

from dataclasses import dataclass, field

import yaml

from fgir.cli import main
from fgir.config import load_config, schema_keys, to_dict
from fgir.config_inspect import (
    class_docstring,
    config_help,
    config_with_origins,
    field_comments,
    format_keys,
    format_with_origins,
    schema_help,
)
from fgir.methods import method_names


def write_recipe(folder):
    (folder / "base.yaml").write_text("train:\n  lr: 0.05\n  epochs: 3\ndata:\n  batch_size: 4\n")
    (folder / "recipe.yaml").write_text(
        "include: [base.yaml]\ntrain:\n  epochs: 7\nmodel:\n  backbone_args: {depth: 2}\n")
    return folder / "recipe.yaml"


def origins_printed(text: str) -> dict[str, str]:
    """Dotted key -> the trailing comment of its line, from `format_with_origins` output."""
    origins, path = {}, []
    for line in text.splitlines():
        depth = (len(line) - len(line.lstrip())) // 2
        name = line.strip().split(":", 1)[0]
        path = [*path[:depth], name]
        if "#" in line:
            origins[".".join(path)] = line.rsplit("# ", 1)[1]
    return origins


def test_each_value_names_the_layer_that_set_it_last(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path)
    overrides = ["data.batch_size=16", "model.backbone_args.num_heads=2"]
    config, origins = config_with_origins(recipe, overrides)
    assert config == load_config(recipe, overrides)
    assert origins == {
        "train.lr": str(tmp_path / "base.yaml"),  # the included file
        "train.epochs": str(recipe),  # the including file overrides its include
        "data.batch_size": "command line",  # the command line overrides both
        "model.backbone_args.depth": str(recipe),
        "model.backbone_args.num_heads": "command line",  # free-form mappings merge key by key
    }

    text = format_with_origins(config, origins)
    assert yaml.safe_load(text) == to_dict(config)  # the comments aside, what save_config writes
    printed = origins_printed(text)
    sections = {entry.key for entry in schema_help() if entry.type == "section"}
    leaves = (set(schema_keys()) - sections - {"model.backbone_args"}) | {"model.backbone_args.depth",
                                                                       "model.backbone_args.num_heads"}
    assert set(printed) == leaves  # every value has its origin
    assert printed["train.lr"] == str(tmp_path / "base.yaml") and printed["train.momentum"] == "default"
    assert printed["data.batch_size"] == "command line"
    monkeypatch.chdir(tmp_path)  # files under the working directory are shown relative to it
    printed = origins_printed(format_with_origins(config, origins))
    assert (printed["train.lr"], printed["train.epochs"]) == ("base.yaml", "recipe.yaml")


def test_config_show_verb(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    assert main(["config", "show", str(recipe), "train.lr=0.2"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["train"] == to_dict(load_config(recipe, ["train.lr=0.2"]))["train"]
    assert "  lr: 0.2" in out and origins_printed(out)["train.lr"] == "command line"
    assert origins_printed(out)["train.epochs"] == str(recipe)
    assert main(["config", "show", str(recipe), "train.lrr=0.2"]) == 2
    assert capsys.readouterr().err.startswith("fgir config: error: unknown config key 'train.lrr'")


def test_config_keys_lists_every_schema_key_with_type_default_and_help(capsys):
    entries = schema_help()
    assert [entry.key for entry in entries] == list(schema_keys())  # the default method's schema
    for entry in entries:
        assert entry.type and (entry.default or entry.type == "section"), entry
    by_key = {entry.key: entry for entry in entries}
    assert (by_key["train.optimizer"].type, by_key["train.optimizer"].default) == ("str", "sgd")
    assert by_key["train.optimizer"].help == "sgd (Nesterov) | adamw"
    assert by_key["train.optimizer"].choices == ("sgd", "adamw")
    assert (by_key["data.val"].type, by_key["data.val"].default) == ("str | None", "val.csv")
    assert by_key["data.mean"].default == "[0.485, 0.456, 0.406]" and by_key["train.resume"].default == "null"
    assert by_key["data.on_error"].help.startswith("fail: an unreadable or missing image stops the run")
    assert by_key["data.long_tail"].help.startswith("Class groups of the long-tail report")

    assert main(["config", "keys"]) == 0
    listed = [line.split(":", 1)[0] for line in capsys.readouterr().out.splitlines() if line and line[0] != " "]
    assert listed == [entry.key for entry in config_help()]
    assert set(listed) == {key for method in method_names() for key in schema_keys(method)}  # every method's keys
    assert main(["config", "keys", "model.glsim"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model.glsim: section  [method glsim]\n")
    assert "model.glsim.top_o: int = 8  [method glsim]\n" in out and "model.peft" not in out
    assert main(["config", "keys", "model.peft.lora_rank"]) == 0
    assert capsys.readouterr().out.startswith("model.peft.lora_rank: int = 8  [method lora]\n")
    assert main(["config", "keys", "modle"]) == 2
    assert "did you mean 'model'?" in capsys.readouterr().err


@dataclass
class Inner:
    """What an inner section holds.

    More detail that is not shown."""

    size: int = 3  # the size


@dataclass
class Outer:
    # Two lines
    # above a field.
    name: str = "a # not a comment"
    count: int = 2  # after it
    # Above
    both: float = 1.5  # and after
    bare: bool = False
    listed: list[int] = field(
        default_factory=lambda: [1, 2],
    )  # after a field of several lines
    inner: Inner = field(default_factory=Inner)


def test_help_comes_from_the_source_of_any_dataclass():
    assert field_comments(Outer) == {"name": "Two lines above a field.", "count": "after it",
                                     "both": "Above and after", "listed": "after a field of several lines"}
    assert class_docstring(Inner) == "What an inner section holds." and class_docstring(Outer) == ""
    entries = {entry.key: entry for entry in schema_help(Outer)}
    assert list(entries) == ["name", "count", "both", "bare", "listed", "inner", "inner.size"]
    assert (entries["name"].default, entries["listed"].default, entries["bare"].help) == ("'a # not a comment'", "[1, 2]", "")
    assert (entries["inner"].type, entries["inner"].help, entries["inner.size"].help) == (
        "section", "What an inner section holds.", "the size")
    assert format_keys(list(entries.values()), "inner") == (
        "inner: section\n    What an inner section holds.\ninner.size: int = 3\n    the size")

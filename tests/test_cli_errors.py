"""Mistakes a user can make, through the CLI: each is answered by one line naming the culprit (or
argparse's usage and one line) and exit status 2, never a traceback."""

import io
import random
from importlib.metadata import version

import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import tiny_overrides
from fgir.cli import main
from fgir.config import load_config
from fgir.engine.checkpoint import save_checkpoint
from fgir.methods import build_model

CLASS_NAMES = ["disc", "square", "triangle_up"]


@pytest.fixture
def checkpoint(tmp_path):
    """An untrained checkpoint of the tiny recipe (its dataset: the synthetic set under tmp_path)."""
    config = load_config(None, tiny_overrides(tmp_path))
    model = build_model(config.model, len(CLASS_NAMES), config.data.image_size, pretrained=False)
    return save_checkpoint(tmp_path / "model.safetensors", model, config, CLASS_NAMES, epoch=1, global_step=1)


@pytest.fixture
def synthetic(tmp_path):
    """The tiny recipe's synthetic set, generated (`fgir data check` does that)."""
    assert main(["data", "check", *tiny_overrides(tmp_path), "--images", "exists", "--no-progress"]) == 0
    return tmp_path / "synthetic"


def one_error_line(capsys, verb: str) -> str:
    err = capsys.readouterr().err
    # Warnings about the recipe (the tiny runs' warm-up is a quarter of the run) are not the error.
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith(f"fgir {verb}: error: "), err
    return lines[0]


def add_row(csv_path, row: str) -> int:
    """Append a row to a split file; its line number."""
    lines = csv_path.read_text().splitlines() + [row]
    csv_path.write_text("\n".join(lines) + "\n")
    return len(lines)


def truncated_jpeg(path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def test_a_bad_split_row_in_train_and_eval_is_one_line_with_file_and_line(tmp_path, synthetic, checkpoint, capsys):
    line = add_row(synthetic / "train.csv", "7,images/disc/train_0.png,1,1,5,5")
    assert main(["train", *tiny_overrides(tmp_path), "--no-progress"]) == 2
    assert f"{synthetic / 'train.csv'}:{line}: class_id must be >= 0, < 3" in one_error_line(capsys, "train")

    line = add_row(synthetic / "test.csv", "x,images/disc/test_0.png,1,1,5,5")
    assert main(["eval", str(checkpoint), "--no-progress"]) == 2
    assert f"{synthetic / 'test.csv'}:{line}: class_id must be an integer, got 'x'" in one_error_line(capsys, "eval")


def test_an_unreadable_image_in_train_without_workers_and_in_explain_is_one_line(tmp_path, synthetic, checkpoint,
                                                                                 capsys):
    image = synthetic / "images" / "disc" / "train_0.png"
    truncated_jpeg(image)
    assert main(["train", *tiny_overrides(tmp_path), "--no-progress"]) == 2
    assert one_error_line(capsys, "train").startswith(f"fgir train: error: cannot read image {image}")

    assert main(["explain", str(checkpoint), str(image), "--out", str(tmp_path / "figures")]) == 2
    assert one_error_line(capsys, "explain").startswith(f"fgir explain: error: cannot read image {image}")


def test_a_config_file_that_is_not_utf8_or_is_a_folder(tmp_path, capsys):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("# caf\xe9\ntrain:\n  lr: 0.1\n".encode("latin-1"))
    assert main(["train", str(recipe)]) == 2
    assert f"{recipe}: not a UTF-8 text file" in one_error_line(capsys, "train")
    assert main(["train", str(tmp_path)]) == 2
    assert f"config file {tmp_path} is a folder" in one_error_line(capsys, "train")


def test_yaml_that_does_not_parse_names_file_line_and_column_or_the_override(tmp_path, capsys):
    recipe = tmp_path / "tabs.yaml"
    recipe.write_text("train:\n\tlr: 0.1\n")
    assert main(["train", str(recipe)]) == 2
    assert one_error_line(capsys, "train") == (f"fgir train: error: {recipe}:2:1: invalid YAML: "
                                               "found character '\\t' that cannot start any token")
    assert main(["train", "train.lr=[0.1"]) == 2
    assert "command-line override 'train.lr=[0.1': the value is not valid YAML" in one_error_line(capsys, "train")


def test_wrong_type_config_values_name_key_origin_expected_type_and_value(tmp_path, capsys):
    assert main(["train", "train.epochs=abc"]) == 2
    assert one_error_line(capsys, "train") == ("fgir train: error: bad value for config key 'train.epochs' "
                                               "(command line 'train.epochs=abc'): expected int, got 'abc' (str)")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data:\n  mean: 3\n")
    assert main(["train", str(recipe)]) == 2
    assert one_error_line(capsys, "train") == (f"fgir train: error: bad value for config key 'data.mean' "
                                               f"({recipe}): expected list[float], got 3 (int)")


def damaged(checkpoint, tmp_path, entry: str, value: str | None):
    """A copy of `checkpoint` whose metadata `entry` is replaced by `value` (None: removed)."""
    with safe_open(str(checkpoint), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if value is None:
        del metadata[entry]
    else:
        metadata[entry] = value
    path = tmp_path / f"damaged-{entry}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("entry, value, reason", [
    ("config", "model: [unclosed", "metadata 'config' does not parse (expected ',' or ']', but got '<stream end>')"),
    ("config", "- a list", "metadata 'config' is a list, not a dict"),
    ("class_names", "[not json", "metadata 'class_names' does not parse (Expecting value: line 1 column 2 (char 1))"),
    ("class_names", "[1, 2, 3]", "metadata 'class_names' is not a list of names"),
    ("epoch", "one", "metadata 'epoch' does not parse (invalid literal for int() with base 10: 'one')"),
    ("backbone", '{"model": "vit"}', "metadata 'backbone' holds ['model'], expected ['model', 'weights', 'sha256', "
                                     "'tensors']"),
    ("config", None, "its metadata has no 'config' entry"),
], ids=lambda value: str(value)[:12])
def test_damaged_checkpoint_metadata_is_one_line(checkpoint, tmp_path, capsys, entry, value, reason):
    path = damaged(checkpoint, tmp_path, entry, value)
    assert main(["predict", str(path), str(tmp_path / "any.png")]) == 2
    assert one_error_line(capsys, "predict") == f"fgir predict: error: {path}: damaged fgir checkpoint: {reason}"


@pytest.mark.parametrize("argv", [
    ["predict", "CKPT", "x.png", "--batch-size", "0"],
    ["eval", "CKPT", "--batch-size", "0"],
    ["calibrate", "CKPT", "--batch-size", "-3"],
    ["bench", "CKPT", "--iters", "0"],
    ["train", "--stop-after-epochs", "0"],
], ids=lambda argv: f"{argv[0]}{argv[-2]}")
def test_counts_below_one_are_refused_naming_the_option(checkpoint, capsys, argv):
    argv = [str(checkpoint) if item == "CKPT" else item for item in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"fgir {argv[0]}: error: argument {argv[-2]}: must be >= 1, got {int(argv[-1])}" in err
    assert "Traceback" not in err


def test_a_file_where_a_data_folder_is_expected(checkpoint, tmp_path, capsys):
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("a file, not a folder")
    assert main(["eval", str(checkpoint), f"data.root={not_a_folder}", "--no-progress"]) == 2
    assert one_error_line(capsys, "eval") == f"fgir eval: error: {not_a_folder}: Not a directory"


@pytest.mark.parametrize("content, reason", [
    (random.Random(0).randbytes(4096), "not a file written by torch.save (it does not unpickle)"),
    # A pickle header over random bytes: the weights-only unpickler fails inside (IndexError here).
    (b"\x80\x02" + random.Random(2).randbytes(64), "not a file written by torch.save (it does not unpickle)"),
    (b"", "not a readable torch.save file (EOFError: the file ends early)"),
    (b"plain text, not a checkpoint", "not a file written by torch.save (it does not unpickle)"),
], ids=["random-bytes", "pickle-header", "empty", "text"])
def test_convert_glsim_reference_on_a_file_that_is_no_checkpoint(tmp_path, capsys, content, reason):
    source = tmp_path / "release.pth"
    source.write_bytes(content)
    assert main(["convert", "glsim-reference", str(source), "--out", str(tmp_path / "out.safetensors")]) == 2
    assert one_error_line(capsys, "convert") == f"fgir convert: error: {source}: {reason}"
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_glsim_reference_on_a_safetensors_file(tmp_path, capsys):
    source = tmp_path / "weights.safetensors"
    source.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"{not a header!!}")
    assert main(["convert", "glsim-reference", str(source)]) == 2
    assert one_error_line(capsys, "convert").startswith(f"fgir convert: error: {source}: not a readable torch.save file")


def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"fgir {version('fgir')}\n"


def test_an_internal_error_keeps_its_traceback(checkpoint, monkeypatch):
    # Only user errors become one line: a bug (here a TypeError inside the predictor) still raises.
    import fgir.tools.predictor

    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(fgir.tools.predictor.Predictor, "from_checkpoint", broken)
    with pytest.raises(TypeError, match="a bug"):
        main(["predict", str(checkpoint), "x.png"])

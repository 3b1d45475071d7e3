"""README.md as a newcomer types it, in a folder of their own: the commands are read from the README
(and the Makefile's demo target) and run as `python -m fgir` processes. The test substitutes only
what a newcomer must: their data (miniature datasets in the official download layouts), their
"pretrained" weights file (a tiny random ViT given with model.weights=, as README says for a machine
without internet) and overrides that make the runs tiny (backbone size, 32 px, 2 epochs, no workers)."""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import TINY, TINY_VIT, save_random_vit
from fgir import cli
from official_layouts import make_cotton, make_cub
from readme_commands import REPO, code_blocks, fgir_commands, inline_commands, make_recipe, readme_section

pytestmark = pytest.mark.slow

COMMAND_TIMEOUT_S = 180
WEIGHTS = "weights/vit_tiny.safetensors"  # where the newcomer keeps the backbone file, relative to the clone
# A newcomer's weights file is a small ViT at 32 px; the runs are cut to 2 epochs.
TINY_RUN = ("model.backbone=vit_tiny_patch16_224", TINY_VIT, f"model.weights={WEIGHTS}", "data.image_size=32",
            "train.epochs=2", "train.warmup_steps=2", "data.num_workers=0")
# The README's placeholder for the clone's folder in the output it shows.
CLONE_PLACEHOLDER = "/home/you/fgir"


def fgir(words: list[str], cwd: Path, status: int = 0) -> subprocess.CompletedProcess:
    """Run `fgir ...` (README's spelling) from `cwd` with this checkout's code; check its exit status
    and that no traceback reached the user."""
    assert words[0] == "fgir", words
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "fgir", *words[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S)
    assert done.returncode == status, f"{shlex.join(words)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_the_fgir_command_is_what_python_m_fgir_runs(tmp_path):
    """README types `.venv/bin/fgir` (the console script of fgir.cli:main); these tests run `python -m fgir`."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["fgir"] == "fgir.cli:main"
    assert re.fullmatch(r"fgir \d+\.\d+\S*\n", fgir(["fgir", "--version"], tmp_path).stdout)


def only(commands: list[list[str]], what: str) -> list[str]:
    assert len(commands) == 1, f"README.md should show one {what} command, shows {commands}"
    return commands[0]


def new_clone(root: Path) -> Path:
    """A newcomer's clone as far as the commands see it: the recipes, and a weights file."""
    root.mkdir()
    if (REPO / "configs").is_dir():
        shutil.copytree(REPO / "configs", root / "configs")
    (root / WEIGHTS).parent.mkdir()
    save_random_vit(root / WEIGHTS, **TINY)
    return root


@pytest.fixture(scope="module")
def cub_clone(tmp_path_factory):
    """A clone with a miniature CUB-200-2011 unpacked where README says and prepared with README's
    command (the 200 classes, 2 train + 1 test images each: not the official counts, hence
    --allow-count-mismatch): (clone, the quickstart's commands, what `data prepare` printed)."""
    clone = new_clone(tmp_path_factory.mktemp("cub") / "fgir")
    quickstart = readme_section("Quickstart on a real dataset")
    prepare = only(fgir_commands(quickstart, "data prepare"), "data prepare")
    make_cub(clone / prepare[-1], train_per_class=2, test_per_class=1)
    prepared = fgir([*prepare, "--allow-count-mismatch"], clone)
    return clone, quickstart, prepared.stdout


def test_the_quickstart_on_a_miniature_cub(cub_clone, monkeypatch):
    clone, quickstart, prepared = cub_clone
    assert "train_val 400, train 200, val 200, test 200" in prepared

    check = fgir(only(fgir_commands(quickstart, "data check"), "data check"), clone)
    # The paper recipe trains on train_val (400) and has no validation split.
    assert check.stdout.startswith("ok: 0 errors, 0 warnings; rows per split: train 400, test 200")

    train = only(fgir_commands(quickstart, "train"), "train")
    trained = fgir([*train, *TINY_RUN], clone)
    assert "pretrained weights from " + str(clone / WEIGHTS) in trained.stdout
    assert re.search(r"^test top-1 .*\(200 images, checkpoint ", trained.stdout, flags=re.MULTILINE)

    evaluate = only(fgir_commands(quickstart, "eval"), "eval")
    evaluated = fgir(evaluate, clone)
    assert "200 images scored, 200 classes" in evaluated.stdout
    assert (clone / evaluate[2] / "eval-test" / "predictions.csv").is_file()

    predict = only(fgir_commands(quickstart, "predict"), "predict")
    photo = clone / predict[3]  # the newcomer's own picture, named as README names it
    shutil.copy(next((clone / "data").rglob("*.jpg")), photo)
    predicted = fgir(predict, clone)
    topk = int(predict[predict.index("--topk") + 1])
    ranks = re.findall(r"^\S*\s+(\d+)\s+Bird \d{3}\s+\d+\.\d+%$", predicted.stdout, flags=re.MULTILINE)
    assert ranks == [str(k) for k in range(1, topk + 1)], predicted.stdout

    # README's Python API on the same run, its first paragraph (load, predict) as typed; the second
    # trains the full ViT-B/16 recipe, whose weights this machine cannot download.
    api = code_blocks(readme_section("Python API"), "python")[0].split("\n\n")[0]
    *statements, last = ast.parse(api).body
    pictures = [node.value for node in ast.walk(last)
                if isinstance(node, ast.Constant) and str(node.value).endswith(".jpg")]
    shutil.copy(photo, clone / only(pictures, "Python API picture"))
    monkeypatch.chdir(clone)
    scope: dict = {}
    exec(compile(ast.Module(statements, type_ignores=[]), "README.md", "exec"), scope)
    [prediction] = eval(compile(ast.Expression(last.value), "README.md", "eval"), scope)
    assert [score.class_name for score in prediction.topk] == re.findall(r"Bird \d{3}", predicted.stdout)


def test_the_configuration_error_readme_shows(tmp_path, monkeypatch, capsys):
    clone = new_clone(tmp_path / "fgir")
    example = code_blocks(readme_section("Configuration"))[0].splitlines()
    assert example[0].startswith("$ fgir ") and len(example) == 2, example  # the command, then what it prints
    monkeypatch.chdir(clone)
    # In this process (the console script's main): a process would spend seconds importing to fail at once.
    assert cli.main(shlex.split(example[0])[2:]) == 2
    assert capsys.readouterr().err.splitlines() == example[1:]


def resume_command(run: str) -> list[str]:
    """README's `fgir train train.resume=<run dir>`, with the newcomer's run folder in the placeholder."""
    outputs = readme_section("Outputs of a run")
    words = only(inline_commands(outputs, "fgir train train.resume="), "resume")
    assert words == ["fgir", "train", "train.resume=<run", "dir>"], words  # the placeholder spans two words
    return ["fgir", "train", f"train.resume={run}"]


def test_a_stopped_run_resumes_from_its_own_config(cub_clone):
    clone, quickstart, _ = cub_clone
    train = only(fgir_commands(quickstart, "train"), "train")
    # Another run folder than the quickstart's (the last train.run_name wins), stopped as a job limit would.
    stopped = fgir([*train, *TINY_RUN, "train.run_name=cub-stopped", "--stop-after-epochs", "1"], clone)
    run = clone / "runs" / "cub-stopped"
    assert "stopped after epoch 1/2" in stopped.stdout
    saved = (run / "config.yaml").read_bytes()

    resumed = fgir(resume_command("runs/cub-stopped"), clone)
    assert "resumed " + str(run) + " at the end of epoch 1" in resumed.stdout
    assert "epoch 2/2 " in resumed.stdout and (run / "test_metrics.json").is_file()
    assert (run / "config.yaml").read_bytes() == saved  # the run's description, untouched
    assert sorted(path.name for path in (clone / "data").iterdir()) == ["CUB_200_2011"]  # no dataset generated

    longer = fgir([*resume_command("runs/cub-stopped"), "train.epochs=3"], clone)
    assert "epoch 3/3 " in longer.stdout
    before, after = yaml.safe_load(saved), yaml.safe_load((run / "config.yaml").read_text())
    assert after["train"].pop("epochs") == 3 and before["train"].pop("epochs") == 2
    assert after == before  # only the key the newcomer changed
    epochs = [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"]


def test_an_ila_checkpoint_predicts_from_another_folder_and_takes_moved_weights(tmp_path):
    clone = new_clone(tmp_path / "fgir")
    ila = readme_section("Ultra-fine-grained recognition with ILA")
    prepare = fgir_commands(ila, "data prepare")[0]  # Cotton80: images/<class>_<n>_<split>.jpg
    make_cotton(clone / prepare[-1], train_per_class=3, test_per_class=1)
    fgir([*prepare, "--allow-count-mismatch"], clone)
    train = only(fgir_commands(ila, "train"), "ILA train")
    # The tiny ViT has 2 blocks: one down-sampling ILA, after the first.
    fgir([*train, *TINY_RUN, "train.epochs=1", "model.peft.ila_ds_layers=[0]"], clone)
    run = clone / "runs" / next(word.split("=", 1)[1] for word in train if word.startswith("train.run_name="))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(next((clone / "data").rglob("*_test.jpg")), elsewhere / "img.jpg")
    predict = ["fgir", "predict", str(run), "img.jpg"]
    answer = fgir(predict, elsewhere).stdout

    moved = tmp_path / "moved" / "vit_tiny.safetensors"
    moved.parent.mkdir()
    shutil.move(clone / WEIGHTS, moved)
    refused = fgir(predict, elsewhere, status=2).stderr
    assert len(refused.splitlines()) == 1 and "holds only the trainable weights" in refused
    assert f"is read from {clone / WEIGHTS}, which does not exist" in refused and "--weights PATH" in refused
    assert fgir(["fgir", "predict", "--weights", str(moved), str(run), "img.jpg"], elsewhere).stdout == answer
    assert sorted(path.name for path in elsewhere.iterdir()) == ["img.jpg"]  # nothing written here


def test_the_demo_and_the_predict_command_that_follows_it(tmp_path):
    clone = new_clone(tmp_path / "fgir")
    demo = [words for words in make_recipe("demo") if words[0] == "$(BIN)/fgir"]
    train = ["fgir", *only(demo, "Makefile demo fgir")[1:]]
    # The demo's recipe shrunk: the same 10 classes with 4 train, 1 val and 4 test images each, a 2-block ViT.
    shrunk = (TINY_VIT, "data.synthetic.train_per_class=4", "data.synthetic.val_per_class=1",
              "data.synthetic.test_per_class=4", "data.synthetic.image_size=40", "data.image_size=32",
              "train.epochs=2", "train.warmup_steps=1")
    trained = fgir([*train, *shrunk], clone)
    setup = readme_section("Set up")
    shown = code_blocks(setup.split("the run ends with", 1)[1])[0].splitlines()
    for line, expected in zip(trained.stdout.splitlines()[-len(shown):], shown, strict=True):
        assert re.fullmatch(shown_as(expected, clone), line), (line, expected)

    predict = only(fgir_commands(setup, "predict"), "predict")
    rows = fgir(predict, clone).stdout.splitlines()[1:]
    assert rows[0].startswith(predict[3]) and [row.split()[-3] for row in rows] == ["1", "2", "3", "4", "5"]


def shown_as(shown: str, clone: Path) -> str:
    """A pattern for README's output line `shown`: any number where it shows one, the clone's folder
    where it shows the placeholder."""
    pieces = [re.sub(r"\d+(?:\\\.\d+)?", lambda _: r"\d+(?:\.\d+)?", re.escape(piece))
              for piece in shown.split(CLONE_PLACEHOLDER)]
    return re.escape(str(clone)).join(pieces)

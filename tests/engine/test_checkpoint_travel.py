"""Runs and checkpoints that travel: paths given relative to the working directory are saved absolute,
so eval and predict work from any folder; an adapter-only checkpoint whose backbone file moved takes
it from `--weights` (every verb that loads a checkpoint) or `weights=`, still checked by its SHA-256."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

import fgir
from conftest import TINY, save_random_vit, tiny_overrides
from fgir import cli
from fgir.engine.checkpoint import load_checkpoint, read_backbone_identity


def train_in(work: Path, tmp_path: Path, *extra: str) -> Path:
    """Train a tiny run from `work` with data, weights and outputs given relative to it."""
    os.chdir(work)
    overrides = tiny_overrides(tmp_path, "data.root=data/synthetic", "train.output_dir=runs",
                               "train.run_name=tiny", "train.epochs=1", *extra)
    assert cli.main(["train", *overrides, "--no-progress"]) == 0
    return work / "runs" / "tiny"


def an_image(run: Path) -> str:
    data = load_checkpoint(run).config.data
    return str(next((Path(data.root) / data.image_dir).rglob("*.png")))


def test_a_run_saves_absolute_paths_and_works_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # train_in changes folder; monkeypatch restores it afterwards
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    run = train_in(work, tmp_path)
    saved, stored = yaml.safe_load((run / "config.yaml").read_text()), load_checkpoint(run).config
    assert saved["data"]["root"] == stored.data.root == str(work / "data" / "synthetic")
    assert saved["train"]["output_dir"] == stored.train.output_dir == str(work / "runs")

    monkeypatch.chdir(elsewhere)
    assert cli.main(["eval", str(run), "--no-progress"]) == 0
    report = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert report["num_samples"] == 3 * 3  # the run's own test split: 3 classes x 3 images
    assert cli.main(["predict", str(run), an_image(run)]) == 0
    assert list(elsewhere.iterdir()) == []  # no dataset regenerated here, nothing written here


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """An adapter-only (LoRA) run whose backbone file was given relative to the training folder and
    then moved away: (run, where the checkpoint says the backbone is, where it is now)."""
    tmp_path = tmp_path_factory.mktemp("lora")
    work = tmp_path / "work"
    (work / "weights").mkdir(parents=True)
    save_random_vit(work / "weights" / "pretrained.safetensors", seed=0, **TINY)
    before = os.getcwd()
    try:
        run = train_in(work, tmp_path, "model.method=lora", "model.pretrained=true", "model.peft.lora_rank=2",
                       "model.weights=weights/pretrained.safetensors")
    finally:
        os.chdir(before)
    stored = work / "weights" / "pretrained.safetensors"
    moved = tmp_path / "moved.safetensors"
    shutil.move(stored, moved)
    return run, stored, moved


def test_an_adapter_only_checkpoint_stores_the_absolute_backbone_source(lora_run):
    run, stored, _ = lora_run
    identity = read_backbone_identity(run)
    assert identity is not None and identity.weights == str(stored)


def test_the_backbone_is_found_from_another_folder_or_given_with_weights(lora_run, tmp_path, monkeypatch, capsys):
    run, stored, moved = lora_run
    monkeypatch.chdir(tmp_path)
    image = an_image(run)
    shutil.copy(moved, stored)
    try:
        assert cli.main(["predict", str(run), image]) == 0
    finally:
        stored.unlink()

    capsys.readouterr()
    assert cli.main(["predict", str(run), image]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fgir predict: error: {run / 'checkpoints' / 'best.safetensors'} holds only the "
                          f"trainable weights; its frozen backbone vit_tiny_patch16_224 (SHA-256 ")
    assert f"is read from {stored}, which does not exist" in err and "--weights PATH" in err
    assert len(err.splitlines()) == 1

    assert cli.main(["predict", str(run), image, "--weights", str(moved)]) == 0
    assert fgir.load(str(run), device="cpu", weights=moved).predict(image, topk=1)

    other = tmp_path / "other.safetensors"
    save_random_vit(other, seed=1, **TINY)
    capsys.readouterr()
    assert cli.main(["predict", str(run), image, "--weights", str(other)]) == 2
    err = capsys.readouterr().err
    sha = read_backbone_identity(run).sha256
    assert f"with SHA-256 {sha[:16]}..., but the backbone built here has " in err and "different weights" in err
    assert "--weights PATH" in err


VERBS = {
    "predict": lambda run, image, out: ["predict", run, image],
    "eval": lambda run, image, out: ["eval", run, "--out", out, "--no-progress"],
    "calibrate": lambda run, image, out: ["calibrate", run, "--no-progress"],
    "explain": lambda run, image, out: ["explain", run, image, "--out", out],
    "serve": lambda run, image, out: ["serve", run],
    "bench": lambda run, image, out: ["bench", run, "--warmup", "0", "--iters", "1", "--batch-size", "2"],
    "analyze cka": lambda run, image, out: ["analyze", "cka", run, "--images", str(Path(image).parent),
                                            "--out", f"{out}/cka.png"],
    "convert merge-lora": lambda run, image, out: ["convert", "merge-lora", run, f"{out}/merged.safetensors"],
}


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_that_loads_a_checkpoint_takes_the_backbone_weights(verb, lora_run, tmp_path, monkeypatch):
    run, _, moved = lora_run
    served = []
    monkeypatch.setattr("fgir.app.server.launch", lambda app, *args, **kwargs: served.append(app))
    arguments = VERBS[verb](str(run), an_image(run), str(tmp_path / "out"))
    assert cli.main(arguments) == 2  # the backbone file is gone
    assert cli.main([*arguments, "--weights", str(moved)]) == 0
    assert (verb == "serve") == bool(served)


def test_bench_refuses_weights_for_a_recipe(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  pretrained: false\n")
    assert cli.main(["bench", str(recipe), "--weights", str(tmp_path / "w.safetensors")]) == 2
    assert f"--weights applies to a checkpoint; the recipe {recipe} is benchmarked with random weights" in \
        capsys.readouterr().err

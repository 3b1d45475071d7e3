"""`train.resume` continues a run with its own config: no recipe needed, overrides on top, and only
the keys that leave the model, data and schedule alone may change. A refused resume writes nothing:
no dataset generated, no file of the run replaced."""

import json
import os
import signal

import pytest
import torch
import yaml

from conftest import tiny_overrides
from fgir.cli import main
from fgir.config import ConfigError, load_config
from fgir.engine import trainer
from fgir.engine.checkpoint import load_checkpoint
from fgir.engine.losses import classification_loss
from fgir.engine.trainer import TrainingInterrupted, train


def files_of(folder):
    """Every file under `folder` with its bytes: what a refused resume must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def final_weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.safetensors").model_state


def same_weights(a, b):
    a, b = final_weights(a), final_weights(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def stopped_run(tmp_path, monkeypatch):
    """A run of 2 epochs stopped after the first one, trained from the command line; the working
    directory is an empty folder, as a user's would be."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["train", *tiny_overrides(tmp_path, "train.run_name=part"), "--no-progress",
                 "--stop-after-epochs", "1"]) == 0
    return tmp_path / "runs" / "part"


def test_resume_without_the_recipe_continues_with_the_runs_own_config(tmp_path, stopped_run, capsys):
    full = train(load_config(None, tiny_overrides(tmp_path, "train.run_name=full")), progress=False)
    capsys.readouterr()
    assert main(["train", f"train.resume={stopped_run}", "--no-progress"]) == 0
    assert same_weights(full.run_dir, stopped_run)
    assert [row["epoch"] for row in json.loads((stopped_run / "metrics.json").read_text())] == [1, 2]
    # Nothing from the schema defaults: no data/synthetic generated in the working directory.
    assert list((tmp_path / "work").iterdir()) == []


def test_after_a_refused_resume_the_saved_config_still_resumes_the_run(tmp_path, stopped_run):
    # A first try that changes the model is refused and leaves the run's config.yaml as it was
    # (it used to be overwritten with the schema defaults), so resuming with it as the recipe works.
    assert main(["train", "model.backbone=vit_base_patch16_224", f"train.resume={stopped_run}", "--no-progress"]) == 2
    assert main(["train", str(stopped_run / "config.yaml"), f"train.resume={stopped_run}", "--no-progress"]) == 0
    assert [row["epoch"] for row in json.loads((stopped_run / "metrics.json").read_text())] == [1, 2]


def test_a_change_that_cannot_happen_mid_run_is_refused_and_nothing_is_written(tmp_path, stopped_run, capsys):
    before, data_before = files_of(stopped_run), files_of(tmp_path / "synthetic")
    capsys.readouterr()
    assert main(["train", f"train.resume={stopped_run}", "data.batch_size=2", "model.drop_path=0.2",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (f"fgir train: error: train.resume={stopped_run}: a resumed run keeps its model, data and schedule, but "
            "data.batch_size: the run has 4, given 2; model.drop_path: the run has 0.0, given 0.2") in err
    assert files_of(stopped_run) == before and files_of(tmp_path / "synthetic") == data_before


def test_another_recipe_is_refused_before_any_dataset_is_generated(tmp_path, stopped_run, capsys):
    # A recipe that sets almost nothing: the schema defaults (a ViT-B on data/synthetic with 48
    # images per class) are not this run, and their dataset must not be generated.
    before = files_of(stopped_run)
    recipe = tmp_path / "defaults.yaml"
    recipe.write_text("train:\n  tensorboard: false\n")
    capsys.readouterr()
    assert main(["train", str(recipe), f"train.resume={stopped_run}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "data.root" not in err  # a location, which may change
    assert ("data.image_size: the run has 32, given 224; data.resize_ratio: the run has 1.125, given 1.34; "
            "data.batch_size: the run has 4, given 8 (and ") in err
    assert "more: data.synthetic.num_classes, " in err
    assert list((tmp_path / "work").iterdir()) == []  # no data/synthetic of the defaults
    assert files_of(stopped_run) == before


def test_more_epochs_extend_the_run_and_the_saved_config_follows(tmp_path, stopped_run, capsys):
    capsys.readouterr()
    assert main(["train", f"train.resume={stopped_run}", "train.epochs=3", "data.eval_batch_size=4",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "changed on resume: data.eval_batch_size 8 -> 4; train.epochs 2 -> 3" in out
    assert "lr at step 4: " in out and "(the schedule of train.lr=0.01 over train.epochs=3)" in out
    assert [row["epoch"] for row in json.loads((stopped_run / "metrics.json").read_text())] == [1, 2, 3]
    saved = yaml.safe_load((stopped_run / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 3 and saved["data"]["eval_batch_size"] == 4


def test_the_saved_config_names_no_resume_so_training_from_it_never_extends_the_run(stopped_run, capsys):
    assert main(["train", f"train.resume={stopped_run}", "--no-progress"]) == 0
    assert yaml.safe_load((stopped_run / "config.yaml").read_text())["train"]["resume"] is None
    capsys.readouterr()
    assert main(["train", str(stopped_run / "config.yaml"), "--no-progress"]) == 2
    assert f"{stopped_run} already holds a run; resume it with train.resume={stopped_run}" in capsys.readouterr().err


def test_a_refused_split_change_writes_nothing(tmp_path, stopped_run, capsys):
    before = files_of(stopped_run)
    capsys.readouterr()
    assert main(["train", f"train.resume={stopped_run}", "data.val=null", "--no-progress"]) == 2
    assert "data.val: the run has 'val.csv', given None" in capsys.readouterr().err
    assert files_of(stopped_run) == before


def test_only_changeable_keys_are_reported_and_locations_are_not_compared(tiny_config, tmp_path):
    from fgir.engine.resume_config import CHANGEABLE_ON_RESUME, check_resume_changes

    run = tiny_config("train.run_name=a")
    given = tiny_config("train.run_name=b", "train.output_dir=/elsewhere", "train.epochs=5", "train.lr=0.001",
                        f"data.root={tmp_path / 'moved'}")
    assert check_resume_changes(run, given, "runs/a") == ["data.root", "train.epochs", "train.lr"]
    assert {"train.epochs", "train.lr", "data.num_workers", "train.device"} <= set(CHANGEABLE_ON_RESUME)
    with pytest.raises(ConfigError, match=r"train.warmup_steps: the run has 2, given 3"):
        check_resume_changes(run, tiny_config("train.warmup_steps=3"), "runs/a")


def test_resume_and_stop_messages_name_the_same_place(tiny_config, monkeypatch, capsys):
    calls = []

    def signal_at_batch_6(*args, **kwargs):
        calls.append(None)
        if len(calls) == 6:  # epoch 2, batch 2
            os.kill(os.getpid(), signal.SIGTERM)
        return classification_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "classification_loss", signal_at_batch_6)
    with pytest.raises(TrainingInterrupted, match=r"stopped at epoch 2, batch 2/4 \(step 6\)") as stop:
        train(tiny_config("train.run_name=r"), progress=False)
    run_dir = stop.value.args[0].rsplit("train.resume=", 1)[1]
    monkeypatch.setattr(trainer, "classification_loss", classification_loss)
    # Epochs may change, but not below the one the run is in.
    with pytest.raises(ConfigError, match=rf"train.epochs=1 but the run {run_dir} is already at epoch 2, batch "
                                          r"2/4: give train.epochs=2 or more"):
        train(tiny_config(f"train.resume={run_dir}", "train.epochs=1"), progress=False)
    capsys.readouterr()
    train(tiny_config(f"train.resume={run_dir}"), progress=False)
    assert f"resumed {run_dir} at epoch 2, batch 2/4 (step 6)" in capsys.readouterr().out

"""A run folder is written only once the run starts and removed when the run ends before its first
checkpoint; each metric has one TensorBoard tag, and a run has one event stream across resumes."""

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fgir.engine import trainer
from fgir.engine.losses import classification_loss
from fgir.engine.trainer import train

TENSORBOARD = ("train.tensorboard=true", "train.log_every=1")


def crash_at(monkeypatch, batch):
    """The trainer's loss raises at the `batch`-th training batch of the process (1-based)."""
    calls = []

    def loss(*args, **kwargs):
        calls.append(None)
        if len(calls) == batch:
            raise RuntimeError("simulated crash")
        return classification_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "classification_loss", loss)


def scalars(run_dir):
    """tag -> [(step, value)] as TensorBoard shows the run (purged events left out)."""
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_a_run_that_fails_in_its_first_epoch_leaves_no_folder(tiny_config, monkeypatch):
    crash_at(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_config("train.run_name=r", *TENSORBOARD), progress=False)
    assert not (Path(tiny_config().train.output_dir) / "r").exists()


def test_a_run_refused_at_its_start_creates_no_folder(tiny_config):
    with pytest.raises(Exception, match="train.warmup_steps=100"):
        train(tiny_config("train.run_name=r", "train.warmup_steps=100"), progress=False)
    assert not (Path(tiny_config().train.output_dir) / "r").exists()


def test_the_remains_of_a_killed_attempt_are_replaced_not_added_to(tiny_config, tmp_path):
    # What a SIGKILL in epoch 1 leaves: the config, a TensorBoard file, no checkpoint.
    stub = tmp_path / "runs" / "r"
    (stub / "tb").mkdir(parents=True)
    (stub / "config.yaml").write_text("stale: true\n")
    (stub / "tb" / "events.out.tfevents.1.old").write_bytes(b"")
    (stub / "notes.txt").write_text("a file of the user's")
    train(tiny_config("train.run_name=r", *TENSORBOARD, "train.epochs=1"), progress=False)
    assert len(list((stub / "tb").iterdir())) == 1
    assert "stale" not in (stub / "config.yaml").read_text()
    assert (stub / "notes.txt").read_text() == "a file of the user's"


def test_one_tag_per_metric_and_one_stream_across_a_crash_and_resume(tiny_config, monkeypatch):
    common = (*TENSORBOARD, "train.checkpoint_every_steps=3")
    full = train(tiny_config(*common, "train.run_name=full"), progress=False)
    # Crash at batch 8 (epoch 2): step 7 was logged after the checkpoint at step 6, and is trained again.
    crash_at(monkeypatch, 8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_config(*common, "train.run_name=part"), progress=False)
    part = full.run_dir.parent / "part"
    assert max(step for step, _ in scalars(part)["train/loss"]) == 7
    monkeypatch.setattr(trainer, "classification_loss", classification_loss)
    train(tiny_config(*common, f"train.resume={part}"), progress=False)

    expected, resumed = scalars(full.run_dir), scalars(part)
    # Per step: loss, lr, throughput; per epoch: validation and the epoch's counts. No train_loss or lr twice.
    assert set(resumed) == set(expected) == {
        "train/loss", "train/lr", "train/img_per_s", "train/epoch_s", "train/skipped_steps", "train/skipped_images",
        "val/top1", "val/top5", "val/mean_class_acc", "val/std_class_acc"}
    # Every step once, with the values of the uninterrupted run (training is bit-identical).
    assert [step for step, _ in resumed["train/loss"]] == list(range(1, 9))
    for tag in ("train/loss", "train/lr", "val/top1"):
        assert resumed[tag] == expected[tag]

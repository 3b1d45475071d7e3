"""data.repeated_aug and data.auto_augment in a run: a crash mid-epoch, then a resume, ends
bit-identical to an uninterrupted run (18 training images at batch 4: 4 steps per epoch)."""

import json

import pytest
import torch

from fgir.data import datasets
from fgir.data.images import read_image
from fgir.engine import trainer
from fgir.engine.checkpoint import load_checkpoint
from fgir.engine.losses import classification_loss
from fgir.engine.trainer import train

LEVERS = ("train.epochs=2", "data.augment=medium", "data.repeated_aug=3", "data.auto_augment=augmix-m3-w2",
          "train.checkpoint_every_steps=3")


def test_a_crash_mid_epoch_resumes_bit_identically(tiny_config, monkeypatch):
    reads = []
    monkeypatch.setattr(datasets, "read_image", lambda path, **kw: reads.append(path) or read_image(path, **kw))
    full = train(tiny_config(*LEVERS, "train.run_name=full"), progress=False)
    assert len(set(reads[:16])) == 6  # epoch 1's 4 batches: 6 images, 3 copies each (the last cut to 1)
    calls = []

    def crash(*args, **kwargs):
        calls.append(None)
        if len(calls) == 7:  # epoch 2, batch 3: after the checkpoint at step 6 (epoch 2, batch 2)
            raise RuntimeError("simulated crash")
        return classification_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "classification_loss", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_config(*LEVERS, "train.run_name=part"), progress=False)
    part = full.run_dir.parent / "part"
    last = load_checkpoint(part / "checkpoints" / "last.safetensors", with_train_state=True)
    assert (last.epoch, last.global_step, last.train_state["epoch_state"]["batches"]) == (1, 6, 2)
    monkeypatch.setattr(trainer, "classification_loss", classification_loss)
    train(tiny_config(*LEVERS, f"train.resume={part}"), progress=False)
    a, b = (load_checkpoint(run / "checkpoints" / "last.safetensors").model_state for run in (full.run_dir, part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads((run / "metrics.json").read_text()) for run in (full.run_dir, part)]
    assert [row["train_loss"] for row in rows[0]] == [row["train_loss"] for row in rows[1]]
    assert [row["step"] for row in rows[0]] == [4, 8]  # 18 images, each epoch 18 samples: 4 batches

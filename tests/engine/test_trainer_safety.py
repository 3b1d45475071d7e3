"""Divergence guard, signal handling and mid-epoch checkpoints of the trainer.

The tiny run has 18 training images at batch 4 with the partial batch dropped: 4 batches, so 4
optimizer steps, per epoch. Faults are injected by wrapping the trainer's loss function and
counting its calls (call n is batch n of the run, 1-based).
"""

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from fgir.data import datasets
from fgir.data.images import read_image
from fgir.engine import trainer
from fgir.engine.checkpoint import load_checkpoint
from fgir.engine.losses import classification_loss
from fgir.engine.trainer import DivergenceError, TrainingInterrupted, train
from fgir.errors import FgirError

# As in the bit-identical resume test: every random stream (augmentation, drop path) is in play.
COMMON = ("train.epochs=3", "train.label_smoothing=0.1", "model.drop_path=0.1", "data.augment=medium")


def last_checkpoint(run_dir, **kwargs):
    return load_checkpoint(run_dir / "checkpoints" / "last.safetensors", **kwargs)


def rows(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def same_weights(a, b):
    a, b = last_checkpoint(a).model_state, last_checkpoint(b).model_state
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def same_rows(a, b):
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("train_img_per_s", "epoch_s")} for r in rows]  # noqa: E731
    return strip(rows(a)) == strip(rows(b))


def patch_loss(monkeypatch, on_call):
    """Route the trainer's loss through `on_call(n, loss)`, n counting calls from 1."""
    calls = []

    def loss(*args, **kwargs):
        calls.append(None)
        return on_call(len(calls), classification_loss(*args, **kwargs))

    monkeypatch.setattr(trainer, "classification_loss", loss)
    return calls


class InfiniteGradient(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


def test_the_error_types_are_user_facing():
    assert issubclass(DivergenceError, FgirError) and issubclass(TrainingInterrupted, FgirError)


def test_one_nan_loss_is_skipped_and_training_completes(tiny_config, monkeypatch):
    patch_loss(monkeypatch, lambda n, loss: loss * math.nan if n == 3 else loss)
    result = train(tiny_config("train.run_name=r"), progress=False)
    metrics = rows(result.run_dir)
    assert [r["skipped_steps"] for r in metrics] == [1, 0]
    assert [r["step"] for r in metrics] == [4, 8]  # the schedule still advanced on the skipped step
    assert all(math.isfinite(r["train_loss"]) for r in metrics)
    assert all(torch.isfinite(t).all() for t in last_checkpoint(result.run_dir).model_state.values())


@pytest.mark.parametrize("grad_clip", ["0", "1.0"])
def test_a_non_finite_gradient_skips_the_step(tiny_config, monkeypatch, grad_clip):
    # zero_init_head=false so the gradient reaches the parameters (a zero head blocks the backbone's)
    patch_loss(monkeypatch, lambda n, loss: InfiniteGradient.apply(loss) if n == 2 else loss)
    result = train(tiny_config("train.run_name=r", "train.epochs=1", f"train.grad_clip={grad_clip}",
                               "model.zero_init_head=false"), progress=False)
    assert rows(result.run_dir)[0]["skipped_steps"] == 1
    assert all(torch.isfinite(t).all() for t in last_checkpoint(result.run_dir).model_state.values())


def test_skipping_a_step_leaves_the_weights_as_they_were(tiny_config, monkeypatch):
    # Every step bad but fewer than max_bad_steps: the weights must stay the initial ones.
    patch_loss(monkeypatch, lambda n, loss: loss * math.nan)
    config = tiny_config("train.run_name=r", "train.epochs=1", "train.max_bad_steps=5", "data.val=null")
    result = train(config, progress=False)
    assert rows(result.run_dir)[0]["skipped_steps"] == 4
    torch.manual_seed(config.train.seed)
    initial = trainer.build_model(config.model, 3, config.data.image_size).state_dict()
    state = last_checkpoint(result.run_dir).model_state
    assert all(torch.equal(initial[k], state[k]) for k in initial)


def test_nan_forever_raises_after_max_bad_steps_and_the_last_checkpoint_resumes(tiny_config, monkeypatch):
    calls = patch_loss(monkeypatch, lambda n, loss: loss * math.nan if n > 4 else loss)  # epoch 1 is good
    with pytest.raises(DivergenceError, match=r"epoch 2, step 7: 3 optimizer steps in a row") as err:
        train(tiny_config(*COMMON, "train.run_name=r", "train.max_bad_steps=3"), progress=False)
    assert len(calls) == 4 + 3  # stopped at exactly the third bad step
    run_dir = Path(tiny_config().train.output_dir) / "r"
    assert f"{run_dir}/checkpoints/last.safetensors is intact" in str(err.value)
    assert f"train.resume={run_dir} and a lower train.lr" in str(err.value)
    last = last_checkpoint(run_dir, with_train_state=True)
    assert last.epoch == 1 and last.global_step == 4
    assert all(torch.isfinite(t).all() for t in last.model_state.values())
    # The advice works: resume with a lower lr once the fault is gone; the new lr is the one used.
    monkeypatch.setattr(trainer, "classification_loss", classification_loss)
    result = train(tiny_config(*COMMON, f"train.resume={run_dir}", "train.lr=0.001"), progress=False)
    metrics = rows(result.run_dir)
    assert [r["epoch"] for r in metrics] == [1, 2, 3] and metrics[-1]["lr"] < 0.001


@pytest.mark.parametrize("signum, accum", [(signal.SIGTERM, 1), (signal.SIGINT, 2)], ids=["sigterm", "sigint-accum2"])
def test_a_signal_checkpoints_mid_epoch_and_the_resumed_run_is_bit_identical(tiny_config, monkeypatch, signum, accum):
    common = (*COMMON, f"train.grad_accum_steps={accum}")
    full = train(tiny_config(*common, "train.run_name=full"), progress=False)
    before = signal.getsignal(signum)

    def send_signal(n, loss):
        if n == 5:  # epoch 2, batch 1: the run stops at the end of that optimizer step
            os.kill(os.getpid(), signum)
        return loss

    patch_loss(monkeypatch, send_signal)
    with pytest.raises(TrainingInterrupted, match=f"{signal.Signals(signum).name} received: stopped at epoch 2, "
                                                  f"batch {accum}/4 .*train.resume="):
        train(tiny_config(*common, "train.run_name=part"), progress=False)
    assert signal.getsignal(signum) is before  # the previous handler is back
    part = full.run_dir.parent / "part"
    last = last_checkpoint(part, with_train_state=True)
    assert (last.epoch, last.global_step, last.train_state["epoch_state"]["batches"]) == (1, 4 // accum + 1, accum)
    monkeypatch.setattr(trainer, "classification_loss", classification_loss)
    train(tiny_config(*common, f"train.resume={part}"), progress=False)
    assert same_weights(full.run_dir, part) and same_rows(full.run_dir, part)


def test_periodic_checkpoints_resume_bit_identically_after_a_crash(tiny_config, monkeypatch):
    full = train(tiny_config(*COMMON, "train.run_name=full"), progress=False)

    def crash(n, loss):
        if n == 8:  # epoch 2, batch 4: after the checkpoint at step 6 (epoch 2, batch 2)
            raise RuntimeError("simulated crash")
        return loss

    patch_loss(monkeypatch, crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_config(*COMMON, "train.run_name=part", "train.checkpoint_every_steps=3"), progress=False)
    part = full.run_dir.parent / "part"
    last = last_checkpoint(part, with_train_state=True)
    assert (last.epoch, last.global_step, last.train_state["epoch_state"]["batches"]) == (1, 6, 2)
    monkeypatch.setattr(trainer, "classification_loss", classification_loss)
    reads = []
    monkeypatch.setattr(datasets, "read_image", lambda path, **kw: reads.append(path) or read_image(path, **kw))
    train(tiny_config(*COMMON, f"train.resume={part}", "train.checkpoint_every_steps=3"), progress=False)
    assert same_weights(full.run_dir, part) and same_rows(full.run_dir, part)
    # The 2 batches of epoch 2 trained on before the crash are not read again: 2 + 4 batches of 4
    # images, then 6 validation images after epochs 2 and 3 and the 9 test images.
    assert len(reads) == (2 + 4) * 4 + 2 * 6 + 9


def test_a_second_signal_stops_at_once_and_restores_the_handlers(tiny_config, monkeypatch):
    before = signal.getsignal(signal.SIGINT)

    def send_two(n, loss):
        if n == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    calls = patch_loss(monkeypatch, send_two)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config("train.run_name=r"), progress=False)
    assert len(calls) == 2 and signal.getsignal(signal.SIGINT) is before


def test_with_fp16_loss_scaling_the_scaler_skips_inf_steps_itself():
    # fp16 needs CUDA in a run; the GradScaler logic is the same on CPU.
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scaler.scale(InfiniteGradient.apply(model(torch.ones(1, 3)).sum())).backward()
    assert trainer.optimizer_step(model, optimizer, scaler, grad_clip=1.0)  # not counted as a bad step
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and scaler.get_scale() == 2.0
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(model(torch.ones(1, 3)).sum()).backward()
    assert trainer.optimizer_step(model, optimizer, scaler, grad_clip=0.0)  # the next step updates
    assert not torch.equal(before["weight"], model.weight)

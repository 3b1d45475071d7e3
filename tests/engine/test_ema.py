"""Weight EMA (train.ema_decay): the arithmetic against a hand loop and against timm's ModelEmaV3
(the oracle), driven as timm's train.py drives it; end to end, the EMA in the checkpoints, the
`val_ema_*` metrics, which weights are served, and resume bit identity."""

import json

import pytest
import torch
from test_checkpoint_peft import save_pretrained
from timm.utils import ModelEmaV3
from torch import nn

from fgir.config import ConfigError
from fgir.engine import trainer
from fgir.engine.checkpoint import load_checkpoint, restore_model
from fgir.engine.ema import WeightEma, ema_decay_at
from fgir.engine.losses import classification_loss
from fgir.engine.trainer import served_weights, train


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))


def sgd_steps(net: nn.Module, steps: int):
    """Yield after each of `steps` SGD updates (BatchNorm statistics and its integer counter move too)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    torch.manual_seed(1)
    for step in range(1, steps + 1):
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        yield step


@pytest.mark.parametrize("warmup", [False, True])
def test_decay_schedule_equals_timm_get_decay(warmup):
    oracle = ModelEmaV3(nn.Linear(1, 1), decay=0.9998, use_warmup=warmup)
    assert [ema_decay_at(n, 0.9998, warmup) for n in range(1, 200)] == [oracle.get_decay(n) for n in range(1, 200)]
    assert ema_decay_at(1, 0.9998, warmup) == 0.0  # the first update copies the weights
    assert (ema_decay_at(10, 0.9998, True) == pytest.approx(1 - 10 ** (-2 / 3))) and ema_decay_at(10, 0.9998, False) == 0.9998


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_equals_a_hand_loop_over_optimizer_steps(warmup):
    net, decay = tiny_net(), 0.7
    ema = WeightEma(net, decay, warmup)
    hand = {k: v.clone().double() for k, v in net.state_dict().items()}
    for step in sgd_steps(net, 6):
        ema.update(net, step)
        d = 0.0 if step == 1 else (min(decay, 1 - step ** (-2 / 3)) if warmup else decay)
        for key, value in net.state_dict().items():
            hand[key] = d * hand[key] + (1 - d) * value.double() if value.is_floating_point() else value.double()
    state = ema.state_dict()
    assert state.keys() == hand.keys()
    for key, value in state.items():
        torch.testing.assert_close(value.double(), hand[key], rtol=0, atol=1e-6)
    assert state["1.num_batches_tracked"].item() == 6
    # The EMA is not the raw weights (the test would pass trivially with decay 0).
    assert not torch.allclose(state["0.weight"], net.state_dict()["0.weight"])


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_equals_timm_model_ema_v3_bit_for_bit(warmup):
    net = tiny_net()
    ema, oracle = WeightEma(net, 0.8, warmup), ModelEmaV3(net, decay=0.8, use_warmup=warmup)
    for step in sgd_steps(net, 5):
        ema.update(net, step)
        oracle.update(net, step=step)
    theirs = oracle.module.state_dict()
    assert all(torch.equal(value, theirs[key]) for key, value in ema.state_dict().items())


def test_applied_swaps_the_ema_in_and_restores_the_raw_weights_exactly():
    net = tiny_net()
    ema = WeightEma(net, 0.5, False)
    for step in sgd_steps(net, 3):
        ema.update(net, step)
    raw = {k: v.clone() for k, v in net.state_dict().items()}
    with ema.applied(net):
        assert all(torch.equal(net.state_dict()[k], v) for k, v in ema.state_dict().items())
    assert all(torch.equal(net.state_dict()[k], v) for k, v in raw.items())


def test_served_weights_follow_ema_select():
    assert [served_weights(s, 50.0, 60.0) for s in ("raw", "ema", "best")] == ["raw", "ema", "ema"]
    assert served_weights("best", 60.0, 60.0) == "raw"  # a tie keeps the raw weights


def test_bad_ema_keys_are_refused_naming_the_key(tiny_config):
    with pytest.raises(ConfigError, match=r"train.ema_decay.*\(0, 1\).*got 1.5"):
        tiny_config("train.ema_decay=1.5")
    with pytest.raises(ConfigError, match="train.ema_select=best.*data.val is null"):
        tiny_config("train.ema_decay=0.9", "train.ema_select=best", "data.val=null")
    with pytest.raises(ConfigError, match="train.ema_select.*raw, ema, best"):
        tiny_config("train.ema_select=emma")


def test_a_run_stores_the_ema_logs_its_metrics_and_serves_it(tiny_config):
    result = train(tiny_config("train.ema_decay=0.5", "train.run_name=r"), progress=False)
    rows = json.loads((result.run_dir / "metrics.json").read_text())
    assert all("val_top1" in row and "val_ema_top1" in row and "val_ema_top5" in row for row in rows)
    for name in ("best", "last"):
        checkpoint = load_checkpoint(result.run_dir / "checkpoints" / f"{name}.safetensors")
        assert checkpoint.served == "ema" and checkpoint.ema_state.keys() == checkpoint.model_state.keys()
        assert any(not torch.equal(checkpoint.ema_state[k], checkpoint.model_state[k]) for k in checkpoint.ema_state)
    last = load_checkpoint(result.run_dir / "checkpoints" / "last.safetensors")
    model, _ = restore_model(result.run_dir / "checkpoints" / "last.safetensors")  # predict / eval / export
    assert all(torch.equal(model.state_dict()[k], v) for k, v in last.ema_state.items())
    best = load_checkpoint(result.checkpoint)
    assert best.metrics["val"] == best.metrics["val_ema"] and "val_raw" in best.metrics
    assert best.metrics["val"]["top1"] == max(row["val_ema_top1"] for row in rows)  # selected by the EMA's top-1


def test_ema_select_raw_keeps_the_ema_beside_but_serves_the_raw_weights(tiny_config):
    result = train(tiny_config("train.ema_decay=0.5", "train.ema_select=raw", "train.select=last",
                               "train.epochs=1", "train.run_name=r"), progress=False)
    last = load_checkpoint(result.checkpoint)
    assert last.served == "raw" and last.ema_state
    model, _ = restore_model(result.checkpoint)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in last.model_state.items())


def test_a_run_resumed_mid_epoch_after_a_crash_ends_bit_identical_ema_included(tiny_config, monkeypatch):
    common = ("train.epochs=3", "train.ema_decay=0.6", "train.ema_warmup=true", "train.grad_accum_steps=2",
              "train.checkpoint_every_steps=1", "data.augment=medium", "train.select=last")
    full = train(tiny_config(*common, "train.run_name=full"), progress=False)
    calls = []

    def crash_at_batch_7(*args, **kwargs):  # epoch 2, after the checkpoint of its first optimizer step
        calls.append(None)
        if len(calls) == 7:
            raise RuntimeError("simulated crash")
        return classification_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "classification_loss", crash_at_batch_7)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_config(*common, "train.run_name=part"), progress=False)
    monkeypatch.setattr(trainer, "classification_loss", classification_loss)
    part = full.run_dir.parent / "part"
    stopped = load_checkpoint(part / "checkpoints" / "last.safetensors", with_train_state=True)
    assert (stopped.epoch, stopped.train_state["epoch_state"]["batches"]) == (1, 2) and stopped.ema_state
    resumed = train(tiny_config(*common, f"train.resume={part}"), progress=False)
    a = load_checkpoint(full.run_dir / "checkpoints" / "last.safetensors")
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "last.safetensors")
    assert a.ema_state.keys() == b.ema_state.keys() and all(torch.equal(a.ema_state[k], b.ema_state[k]) for k in a.ema_state)
    assert all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("train_img_per_s", "epoch_s")} for r in rows]  # noqa: E731
    assert strip(json.loads((full.run_dir / "metrics.json").read_text())) == strip(
        json.loads((resumed.run_dir / "metrics.json").read_text()))
    assert full.test_metrics == resumed.test_metrics


def test_frozen_backbone_run_keeps_an_ema_of_the_stored_tensors_only(tiny_config, tmp_path):
    weights = tmp_path / "pretrained.safetensors"
    save_pretrained(weights, seed=0)
    result = train(tiny_config("model.method=vpt_deep", "model.peft.prompt_length=2", "model.pretrained=true",
                               f"model.weights={weights}", "train.ema_decay=0.5", "train.epochs=1",
                               "train.run_name=r"), progress=False)
    last = load_checkpoint(result.run_dir / "checkpoints" / "last.safetensors")
    assert last.backbone is not None  # adapter-only
    assert last.ema_state.keys() == last.model_state.keys() and len(last.ema_state) < 10

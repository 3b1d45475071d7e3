import json

import pytest
import torch

from fgir.engine.checkpoint import load_checkpoint
from fgir.engine.trainer import train


def weights(path):
    return load_checkpoint(path).model_state


def test_a_run_writes_config_metrics_checkpoints_and_scores_test_once(tiny_config):
    result = train(tiny_config("train.run_name=r", "train.tensorboard=true"), progress=False)
    run = result.run_dir
    assert (run / "config.yaml").is_file() and (run / "tb").is_dir()
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2] and all("val_top1" in r for r in rows)
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,step,train_loss")
    best = max(rows, key=lambda r: r["val_top1"])  # first epoch wins ties
    assert result.checkpoint == run / "checkpoints" / "best.safetensors"
    assert load_checkpoint(result.checkpoint).epoch == best["epoch"]
    summary = json.loads((run / "test_metrics.json").read_text())
    assert summary["test"]["num_samples"] == 9 and summary["epoch"] == best["epoch"]


def test_without_a_validation_split_the_last_weights_are_tested(tiny_config):
    result = train(tiny_config("data.val=null", "train.run_name=r"), progress=False)
    assert result.checkpoint.name == "last.safetensors" and result.val_metrics is None
    assert result.test_metrics["num_samples"] == 9


def test_select_last_scores_test_with_the_last_epoch_even_with_a_validation_split(tiny_config):
    result = train(tiny_config("train.select=last", "train.run_name=r"), progress=False)
    run = result.run_dir
    assert result.checkpoint.name == "last.safetensors" and not (run / "checkpoints" / "best.safetensors").exists()
    assert json.loads((run / "test_metrics.json").read_text())["epoch"] == 2
    assert all("val_top1" in row for row in json.loads((run / "metrics.json").read_text()))  # still monitored


def test_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tiny_config):
    common = ("train.epochs=3", "train.label_smoothing=0.1", "model.drop_path=0.1", "data.augment=medium")
    full = train(tiny_config(*common, "train.run_name=full"), progress=False)
    part = train(tiny_config(*common, "train.run_name=part"), progress=False, stop_after_epochs=1)
    assert load_checkpoint(part.run_dir / "checkpoints" / "last.safetensors").epoch == 1
    resumed = train(tiny_config(*common, f"train.resume={part.run_dir}"), progress=False)
    a, b = weights(full.run_dir / "checkpoints" / "last.safetensors"), weights(resumed.run_dir / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("train_img_per_s", "epoch_s")} for r in rows]  # noqa: E731
    assert strip(json.loads((full.run_dir / "metrics.json").read_text())) == strip(
        json.loads((resumed.run_dir / "metrics.json").read_text()))
    assert full.test_metrics == resumed.test_metrics


def test_gradient_accumulation_and_clipping_run(tiny_config):
    result = train(tiny_config("train.grad_accum_steps=2", "train.grad_clip=0.5", "train.epochs=1",
                               "train.optimizer=adamw", "train.lr=0.001", "train.run_name=r"), progress=False)
    rows = json.loads((result.run_dir / "metrics.json").read_text())
    assert rows[0]["step"] == 2  # 18 images, batch 4, partial batch dropped -> 4 batches -> 2 steps


def test_strong_augmentation_trains_on_mixed_targets(tiny_config):
    result = train(tiny_config("data.augment=strong", "train.epochs=1", "train.run_name=r"), progress=False)
    assert result.test_metrics["num_samples"] == 9


def test_an_existing_run_is_not_overwritten(tiny_config):
    train(tiny_config("train.epochs=1", "train.run_name=same"), progress=False)
    with pytest.raises(FileExistsError, match="train.resume="):
        train(tiny_config("train.epochs=1", "train.run_name=same"), progress=False)


def test_one_optimizer_step_lowers_the_loss(tiny_config):
    from fgir.engine.losses import classification_loss
    from fgir.engine.optim import build_optimizer
    from fgir.methods import build_model

    config = tiny_config("model.zero_init_head=false", "train.optimizer=sgd", "train.lr=0.05")
    torch.manual_seed(0)
    model = build_model(config.model, 3, 32)
    optimizer = build_optimizer(model, config.train)
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 3
    before = classification_loss(model(images), labels)
    before.backward()
    optimizer.step()
    assert classification_loss(model(images), labels).item() < before.item()


@pytest.mark.slow
def test_a_short_run_learns_the_synthetic_set_far_above_chance(tiny_config):
    # The demo recipe (synthetic/vit) scaled down: 4 classes, 48 px, a narrower ViT.
    config = tiny_config(
        "data.synthetic.num_classes=4", "data.synthetic.train_per_class=150", "data.synthetic.val_per_class=10",
        "data.synthetic.test_per_class=25", "data.synthetic.image_size=48", "data.image_size=48",
        "data.resize_ratio=1.15", "model.backbone_args={patch_size: 8, embed_dim: 96, depth: 3, num_heads: 3}",
        "model.zero_init_head=false", "data.batch_size=32", "train.optimizer=adamw", "train.lr=0.0005",
        "train.weight_decay=0.05", "train.warmup_steps=40", "train.epochs=30", "train.run_name=learn")
    result = train(config, progress=False)
    assert result.test_metrics["top1"] >= 60.0  # chance is 25%


def test_bf16_autocast_trains_on_cpu(tiny_config):
    result = train(tiny_config("train.precision=bf16", "train.epochs=1", "train.run_name=r"), progress=False)
    assert result.test_metrics["num_samples"] == 9
    assert all(t.dtype == torch.float32 for t in weights(result.checkpoint).values())  # weights stay fp32


def test_glsim_trains_through_the_generic_trainer(tiny_config):
    result = train(tiny_config("model.method=glsim", "model.glsim.top_o=4", "train.epochs=1", "train.run_name=g"),
                   progress=False)
    state = weights(result.checkpoint)
    assert any(k.startswith("aggregator.") for k in state) and "crop_cls" in state
    assert result.test_metrics["num_samples"] == 9

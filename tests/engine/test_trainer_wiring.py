"""The trainer with the other parts of the project: frozen-backbone methods on pretrained weights
(adapter-only checkpoints through resume and the final reload), networks without a ViT backbone,
and the compute switches train.compile and train.grad_checkpointing."""

import safetensors.torch
import torch

from conftest import TINY, AotEagerCompiler, tiny_overrides
from fgir.config import load_config
from fgir.engine import trainer
from fgir.engine.checkpoint import load_checkpoint, read_backbone_identity, restore_model
from fgir.engine.trainer import train
from fgir.models.weights import create_vit


def final_state(result) -> dict[str, torch.Tensor]:
    return load_checkpoint(result.run_dir / "checkpoints" / "last.safetensors").model_state


def save_pretrained(path) -> None:
    torch.manual_seed(0)
    vit = create_vit("vit_tiny_patch16_224", pretrained=False, img_size=32, **TINY)
    safetensors.torch.save_file(vit.state_dict(), str(path))


def test_a_peft_method_on_pretrained_weights_resumes_and_restores_from_adapter_only_checkpoints(tiny_config, tmp_path):
    save_pretrained(tmp_path / "pretrained.safetensors")
    peft = ["model.method=ila", "model.peft.ila_ds_layers=[0]", "model.pretrained=true",
            f"model.weights={tmp_path / 'pretrained.safetensors'}"]
    whole = train(tiny_config(*peft, "train.run_name=whole"), progress=False)
    train(tiny_config(*peft, "train.run_name=parts"), progress=False, stop_after_epochs=1)
    parts = train(tiny_config(*peft, "train.run_name=parts", f"train.resume={tmp_path / 'runs' / 'parts'}"),
                  progress=False)
    assert read_backbone_identity(whole.checkpoint) is not None  # adapter-only
    expected, resumed = final_state(whole), final_state(parts)
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[key], resumed[key]) for key in expected)
    assert parts.test_metrics == whole.test_metrics
    model, _ = restore_model(whole.checkpoint)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < sum(p.numel() for p in model.parameters())


def test_a_cnn_trains_without_the_vit_checks(tmp_path):
    resnet = "model.backbone_args={layers: [1, 1, 1, 1], channels: [8, 16, 32, 64], stem_width: 8}"
    vit_free = [item for item in tiny_overrides(tmp_path) if not item.startswith("model.backbone_args")]
    config = load_config(None, [*vit_free, "model.method=cnn", "model.backbone=resnet18.tv_in1k", resnet,
                                "train.epochs=1"])
    result = train(config, progress=False)
    assert result.test_metrics["num_samples"] == 9


def test_channels_last_trains_a_cnn_to_the_same_weights(tmp_path):
    resnet = "model.backbone_args={layers: [1, 1, 1, 1], channels: [8, 16, 32, 64], stem_width: 8}"
    vit_free = [item for item in tiny_overrides(tmp_path) if not item.startswith("model.backbone_args")]
    base = [*vit_free, "model.method=cnn", "model.backbone=resnet18.tv_in1k", resnet, "train.epochs=1"]
    plain = train(load_config(None, [*base, "train.run_name=plain"]), progress=False)
    nhwc = train(load_config(None, [*base, "train.run_name=nhwc", "train.channels_last=true"]), progress=False)
    expected, got = final_state(plain), final_state(nhwc)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)
    assert nhwc.test_metrics["top1"] == plain.test_metrics["top1"]


def test_grad_checkpointing_trains_to_the_same_weights(tiny_config):
    plain = train(tiny_config("train.run_name=plain", "train.epochs=1"), progress=False)
    recomputed = train(tiny_config("train.run_name=ckpt", "train.epochs=1", "train.grad_checkpointing=true"),
                       progress=False)
    expected, got = final_state(plain), final_state(recomputed)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)


def test_compile_keeps_checkpoints_and_results(tiny_config, monkeypatch):
    # The inductor backend needs minutes of C++ compilation on 2 cores; aot_eager goes through the
    # same dynamo capture and autograd tracing without it.
    monkeypatch.setattr(trainer, "compile_model", AotEagerCompiler())
    eager = train(tiny_config("train.run_name=eager", "train.epochs=1"), progress=False)
    compiled = train(tiny_config("train.run_name=compiled", "train.epochs=1", "train.compile=true"), progress=False)
    expected, got = final_state(eager), final_state(compiled)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)
    assert compiled.test_metrics["num_samples"] == 9


def test_class_weights_reach_the_loss(tiny_config, monkeypatch):
    # The tiny synthetic set is balanced: inverse_sqrt weights are all 1 and change nothing ...
    plain = train(tiny_config("train.run_name=plain", "train.epochs=1"), progress=False)
    weighted = train(tiny_config("train.run_name=weighted", "train.epochs=1", "train.class_weights=inverse_sqrt"),
                     progress=False)
    expected, got = final_state(plain), final_state(weighted)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=key)
    # ... while unequal weights change the training.
    monkeypatch.setattr(trainer, "class_weights", lambda counts, scheme: torch.tensor([3.0, 1.0, 1.0]))
    skewed = final_state(train(tiny_config("train.run_name=skewed", "train.epochs=1",
                                           "train.class_weights=inverse_sqrt"), progress=False))
    assert not torch.allclose(skewed["head.weight"], expected["head.weight"])

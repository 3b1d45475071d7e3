import math

import pytest
import torch
import torch.nn.functional as F

from fgir.config import TrainConfig
from fgir.engine.losses import class_weights, classification_loss
from fgir.engine.metrics import classification_metrics, confusion_matrix, topk_accuracy
from fgir.engine.optim import build_optimizer, build_scheduler, lr_at


def test_schedule_warms_up_linearly_then_follows_a_cosine_to_min_lr():
    train = TrainConfig(lr=0.01, warmup_steps=10, warmup_lr=1e-6, min_lr=1e-5)
    assert lr_at(0, 110, train) == pytest.approx(1e-6)
    assert lr_at(5, 110, train) == pytest.approx(1e-6 + (0.01 - 1e-6) / 2)
    assert lr_at(10, 110, train) == pytest.approx(0.01)
    assert lr_at(60, 110, train) == pytest.approx(1e-5 + 0.5 * (0.01 - 1e-5))
    assert lr_at(110, 110, train) == pytest.approx(1e-5)


def test_scheduler_drives_the_optimizer_per_step():
    train = TrainConfig(lr=0.1, warmup_steps=2, warmup_lr=0.0, min_lr=0.0)
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, train)
    scheduler = build_scheduler(optimizer, 4, train)
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.0, 0.05, 0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 2))]
    assert seen == pytest.approx(expected)


def test_no_weight_decay_on_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.05, optimizer="adamw"))
    decayed, plain = optimizer.param_groups
    assert [p.shape for p in decayed["params"]] == [torch.Size([2, 2])] and decayed["weight_decay"] == 0.05
    assert len(plain["params"]) == 3 and plain["weight_decay"] == 0.0


def test_soft_target_loss_equals_hard_loss_for_one_hot_targets():
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    one_hot = F.one_hot(labels, 4).float()
    for eps in (0.0, 0.1):
        assert classification_loss(logits, one_hot, eps).item() == pytest.approx(
            classification_loss(logits, labels, eps).item(), abs=1e-6)


def test_metrics_against_hand_counts():
    logits = torch.tensor([[3.0, 2, 1], [1, 3, 2], [3, 1, 2], [1, 2, 3]])
    labels = torch.tensor([0, 2, 2, 2])
    assert topk_accuracy(logits, labels, 1) == 0.5
    assert topk_accuracy(logits, labels, 2) == 1.0
    confusion = confusion_matrix(logits.argmax(1), labels, 3)
    assert confusion.tolist() == [[1, 0, 0], [0, 0, 0], [1, 1, 1]]
    metrics = classification_metrics(logits, labels)
    # class 0: 1/1, class 2: 1/3, class 1 absent and ignored
    assert metrics["mean_class_acc"] == pytest.approx(100 * (1 + 1 / 3) / 2)
    assert metrics["std_class_acc"] == pytest.approx(100 * (1 - 1 / 3) / 2)
    assert metrics["top5"] == 100.0 and metrics["num_samples"] == 4


def test_class_weights_by_hand():
    counts = torch.tensor([100, 25, 4, 0])
    assert class_weights(counts, "none") is None
    raw = torch.tensor([1 / 10, 1 / 5, 1 / 2, 1 / 2], dtype=torch.float64)  # the empty class: the largest
    torch.testing.assert_close(class_weights(counts, "inverse_sqrt"), (raw * 4 / raw.sum()).float())
    beta = 0.999
    effective = torch.tensor([(1 - beta) / (1 - beta**n) for n in (100, 25, 4)], dtype=torch.float64)
    effective = torch.cat([effective, effective.max().reshape(1)])
    torch.testing.assert_close(class_weights(counts, "effective_number"), (effective * 4 / effective.sum()).float())
    with pytest.raises(ValueError, match="unknown class weighting 'inverse'"):
        class_weights(counts, "inverse")


def test_weighted_loss_is_the_weighted_mean_for_hard_and_soft_targets():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 0])
    weight = torch.tensor([0.5, 1.0, 1.5])
    per_sample = -torch.log_softmax(logits, dim=1)[torch.arange(5), labels]
    expected = (per_sample * weight[labels]).sum() / weight[labels].sum()
    torch.testing.assert_close(classification_loss(logits, labels, weight=weight), expected)
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    torch.testing.assert_close(classification_loss(logits, one_hot, weight=weight), expected)


def test_layer_decay_scales_each_parameter_as_timm_assigns_it():
    from timm.optim._param_groups import param_groups_layer_decay

    from fgir.models.backbone import Backbone
    from fgir.models.classifier import ViTClassifier

    backbone = Backbone.create("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                               depth=3, num_heads=2)
    model = ViTClassifier(backbone, 5, zero_init_head=False)
    train = TrainConfig(lr=0.1, layer_decay=0.5, weight_decay=0.05)
    optimizer = build_optimizer(model, train)
    ours = {id(p): group["lr"] / train.lr for group in optimizer.param_groups for p in group["params"]}
    theirs = {id(p): group["lr_scale"] for group in param_groups_layer_decay(backbone.vit, layer_decay=0.5)
              for p in group["params"]}
    assert {k: ours[k] for k in theirs} == pytest.approx(theirs)
    assert ours[id(model.backbone.vit.cls_token)] == pytest.approx(0.5 ** 3)  # the stem, 3 blocks below the top
    head = [p for name, p in model.named_parameters() if name.startswith("head.")]
    assert head and all(ours[id(p)] == 1.0 for p in head) and optimizer.param_groups[0]["lr"] == train.lr
    decay = {id(p) for group in optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]}
    assert id(model.backbone.vit.blocks[0].attn.qkv.weight) in decay and id(model.backbone.vit.cls_token) not in decay


def test_layer_decay_survives_the_resume_lr_reset():
    from fgir.engine.trainer import use_config_lr
    from fgir.models.backbone import Backbone
    from fgir.models.classifier import ViTClassifier

    backbone = Backbone.create("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                               depth=2, num_heads=2)
    train = TrainConfig(lr=0.1, layer_decay=0.5, warmup_steps=0)
    optimizer = build_optimizer(ViTClassifier(backbone, 3), train)
    scheduler = build_scheduler(optimizer, 10, train)
    before = [group["lr"] for group in optimizer.param_groups]
    use_config_lr(optimizer, scheduler, train.lr)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx(before) and len(set(before)) > 1

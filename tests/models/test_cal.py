"""CAL (arXiv 2108.08728) against its definition as the reference code computes it: pooling, the
counterfactual branch, the centre loss, crop and drop, the loss, the test-time procedure, what
trains, and the parameter count of the ViT-B/16 and ResNet-101 models the papers' tables ran."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_backbone
from fgir.config import model_config
from fgir.engine.checkpoint import restore_model
from fgir.engine.trainer import train
from fgir.errors import ConfigError
from fgir.methods import build_model
from fgir.models.cal import CALConfig, CALViTConfig, build_cal
from fgir.models.cal import head as head_module
from fgir.models.cal.augment import attention_crop, attention_drop, crop_boxes, pick_two_maps
from fgir.models.cal.head import centre_loss, step_centres
from fgir.models.layers.bilinear_pooling import bilinear_attention_pooling

CLASSES = 3


def tiny_cal(**section) -> torch.nn.Module:
    """CAL on the tiny random ViT (32 px, a 4x4 grid of width 32), 4 maps, a random head."""
    config = model_config("cal", zero_init_head=False, cal=CALViTConfig(attention_maps=4, **section))
    torch.manual_seed(0)
    return build_cal(tiny_backbone(), CLASSES, config)


def images(count: int = 4) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_pooling_is_the_per_map_mean_of_map_times_features_then_signed_sqrt_and_l2():
    features, attention = torch.randn(2, 5, 3, 4), torch.rand(2, 3, 3, 4)
    per_map = [(features * attention[:, m:m + 1]).mean(dim=(2, 3)) for m in range(3)]  # (B, C) each
    raw = torch.cat(per_map, dim=1)
    signed = torch.sign(raw) * torch.sqrt(raw.abs() + 1e-6)
    expected = signed / signed.norm(dim=1, keepdim=True)
    torch.testing.assert_close(bilinear_attention_pooling(features, attention), expected)


def test_the_effect_is_logits_minus_those_of_random_maps_in_0_2_drawn_anew_each_training_pass(monkeypatch):
    model = tiny_cal().train()
    head = model.head
    feature_maps = model.feature_maps(images())
    pooled_with = []
    real_pooling = head_module.bilinear_attention_pooling

    def recording(features, maps):
        pooled_with.append(maps)
        return real_pooling(features, maps)

    monkeypatch.setattr(head_module, "bilinear_attention_pooling", recording)
    first, second = head(feature_maps), head(feature_maps)
    learned, random_maps = pooled_with[0], pooled_with[1]
    assert random_maps.shape == learned.shape == (4, 4, 4, 4)
    assert 0 <= random_maps.min() and random_maps.max() < 2 and abs(random_maps.mean().item() - 1) < 0.1
    assert not torch.equal(pooled_with[1], pooled_with[3])  # fresh maps each pass
    counterfactual = head.fc(real_pooling(feature_maps, random_maps) * 100)
    torch.testing.assert_close(first.effect, first.logits - counterfactual)
    assert not torch.allclose(first.effect, second.effect)
    assert head.eval()(feature_maps).effect is None


def test_centre_loss_and_centre_step_by_hand():
    centres = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 2])
    batch = step_centres(centres, features, labels, beta=0.5)
    torch.testing.assert_close(batch, torch.tensor([[0.6, 0.8], [1.0, 0.0]]))
    # ((1 - .6)^2 + (0 - .8)^2 + (0 - 1)^2 + (1 - 0)^2) / 2
    torch.testing.assert_close(centre_loss(features, batch), torch.tensor((0.16 + 0.64 + 1 + 1) / 2))
    # Each centre moves by beta (features - normalised centre); class 1 is untouched.
    torch.testing.assert_close(centres, torch.tensor([[3.2, 3.6], [0.0, 0.0], [0.5, 0.5]]))


def peak_map() -> torch.Tensor:
    """5x5 map of ones on rows 1-2, columns 2-3: upsampled to 17x17 (exactly 4 pixels per cell) it is
    rows(r) * cols(c) with rows(r) = clip(min(r, 3 - r), 0, 1), cols(c) = clip(min(c - 1, 4 - c), 0, 1)."""
    low = torch.zeros(1, 1, 5, 5)
    low[..., 1:3, 2:4] = 1.0
    return low


def by_hand_mask(fraction: float) -> torch.Tensor:
    position = torch.arange(17) / 4
    rows = torch.clamp(torch.minimum(position, 3 - position), 0, 1)
    cols = torch.clamp(torch.minimum(position - 1, 4 - position), 0, 1)
    return rows[:, None] * cols[None, :] >= fraction


def test_crop_box_and_drop_mask_of_a_constructed_map():
    maps = peak_map()
    # At half the maximum the mask spans rows 2..10 and columns 6..14; the box's end is exclusive
    # there (as the reference's slice) and padding widens it by int(0.1 * 17) pixels per side.
    assert by_hand_mask(0.5).any(1).nonzero().flatten()[[0, -1]].tolist() == [2, 10]
    assert crop_boxes(maps, (17, 17), 0.5, 0.0).tolist() == [[6, 2, 14, 10]]
    assert crop_boxes(maps, (17, 17), 0.5, 0.1).tolist() == [[4, 0, 15, 11]]
    image = torch.randn(1, 3, 17, 17)
    expected_crop = F.interpolate(image[:, :, 0:11, 4:15], size=(17, 17), mode="bilinear", align_corners=True)
    torch.testing.assert_close(attention_crop(image, maps, 0.5, 0.1), expected_crop)
    torch.testing.assert_close(attention_drop(image, maps, 0.5), image * ~by_hand_mask(0.5))
    # Scaled maps give the same boxes (thresholds are fractions of each map's maximum).
    assert crop_boxes(torch.cat([maps, 7 * maps]), (17, 17), torch.tensor([0.5, 0.5]), 0.0).tolist() == [
        [6, 2, 14, 10]] * 2


def test_a_map_without_mass_crops_the_whole_image():
    assert crop_boxes(torch.zeros(1, 1, 4, 4), (16, 12), 0.5, 0.1).tolist() == [[0, 0, 12, 16]]


def test_crop_and_drop_maps_are_drawn_by_the_square_root_of_their_mass():
    attention = torch.zeros(4000, 2, 1, 1)
    attention[:, 0], attention[:, 1] = 1.0, 9.0  # sqrt: 1 and 3, so map 1 with probability 3/4
    torch.manual_seed(0)
    picked = pick_two_maps(attention)
    assert picked.shape == (4000, 2, 1, 1)
    assert abs((picked == 9.0).float().mean().item() - 0.75) < 0.03


def test_extra_loss_is_the_reference_loss_minus_the_engines_cross_entropy():
    model = tiny_cal().train()
    labels = torch.tensor([0, 1, 2, 0])
    torch.manual_seed(5)
    logits = model(images())
    raw, augmented = model._last.raw, model._last.augmented
    assert augmented.logits.shape == (8, CLASSES)  # crops then drops, one pass
    centres = model.centres.clone()
    batch = F.normalize(centres[labels], dim=-1)
    reference = (F.cross_entropy(raw.logits, labels) / 3
                 + F.cross_entropy(augmented.logits, labels.repeat(2)) * 2 / 3
                 + F.cross_entropy(torch.cat([raw.effect, augmented.effect]), labels.repeat(3))
                 + ((raw.features - batch) ** 2).sum() / 4)
    total = F.cross_entropy(logits, labels) + model.extra_loss(logits, labels)
    torch.testing.assert_close(total, reference)
    torch.testing.assert_close(model.centres, centres.index_put((labels,), centres[labels] + 0.05 * (
        raw.features.detach() - batch)))
    assert model.extra_loss(logits, labels) is None  # once per training forward
    model.eval()(images())
    assert model.extra_loss(logits, labels) is None


def test_mixed_targets_give_the_mixup_criterion_and_centres_follow_the_dominant_class():
    model = tiny_cal().train()
    a, b, lam = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 2]), 0.7
    soft = lam * F.one_hot(a, CLASSES).float() + (1 - lam) * F.one_hot(b, CLASSES).float()
    logits = model(images())
    raw, augmented = model._last.raw, model._last.augmented
    effects = torch.cat([raw.effect, augmented.effect])

    def cross_entropies(labels):
        return (-2 / 3 * F.cross_entropy(raw.logits, labels) + 2 / 3 * F.cross_entropy(augmented.logits, labels.repeat(2))
                + F.cross_entropy(effects, labels.repeat(3)))

    centre = centre_loss(raw.features, F.normalize(model.centres[a], dim=-1))
    expected = lam * cross_entropies(a) + (1 - lam) * cross_entropies(b) + centre
    torch.testing.assert_close(model.extra_loss(logits, soft), expected)


def test_the_test_time_procedure_averages_raw_and_three_crops_on_the_image_and_its_mirror():
    model = tiny_cal().eval()
    x = images()
    with torch.no_grad():
        predicted = model(x)
        views = []
        for view in (x, x.flip(3)):
            maps = model.head.attention(model.feature_maps(view))
            mean_map = maps.mean(1, keepdim=True)
            logits = model.head.fc(bilinear_attention_pooling(model.feature_maps(view), maps) * 100)
            crops = [attention_crop(view, mean_map, fraction, padding)
                     for fraction, padding in ((0.3, 0.1), (0.2, 0.1), (0.1, 0.05))]
            crop_logits = [model.head(model.feature_maps(crop)).logits for crop in crops]
            views.append((logits + crop_logits[0] + crop_logits[1] + crop_logits[2]) / 4)
        torch.testing.assert_close(predicted, (views[0] + views[1]) / 2)
        model.config.test_time = "single_crop"
        single = model.head(model.feature_maps(attention_crop(x, model.head.attention(
            model.feature_maps(x)).mean(1, keepdim=True), 0.1, 0.05))).logits
        raw = model.head(model.feature_maps(x)).logits
        torch.testing.assert_close(model(x), (raw + single) / 2)
        model.config.test_time = "raw"
        torch.testing.assert_close(model(x), raw)
        assert not torch.allclose(predicted, raw)


@pytest.mark.parametrize("frozen", [True, False])
def test_gradient_census_of_the_whole_loss(frozen):
    model = tiny_cal(frozen=frozen).train()
    names = {name for name, _ in model.named_parameters()}
    assert "backbone.vit.cls_token" not in names and model.backbone.vit.pos_embed.shape[1] == 16
    labels = torch.tensor([0, 1, 2, 0])
    logits = model(images())
    (F.cross_entropy(logits, labels) + model.extra_loss(logits, labels)).backward()
    head = {name for name in names if name.startswith("head.")}
    assert head == {"head.attention.conv.weight", "head.attention.bn.weight", "head.attention.bn.bias",
                    "head.fc.weight"}
    with_gradient = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    expected = head if frozen else names
    assert with_gradient == expected
    assert {name for name, p in model.named_parameters() if p.requires_grad} == expected


def test_crop_and_drop_ranges_are_checked():
    with pytest.raises(ConfigError, match=r"model\.cal_cnn\.crop_theta.*\[0\.7, 0\.2\]"):
        CALConfig(crop_theta=[0.7, 0.2])
    with pytest.raises(ConfigError, match=r"model\.cal\.test_time"):
        CALViTConfig(test_time="flip")


def parameter_count(method: str, backbone: str, classes: int, size: int = 224) -> tuple[int, int]:
    with torch.device("meta"):
        model = build_model(model_config(method, backbone=backbone, pretrained=False), classes, size)
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))


def cal_head_size(channels: int, classes: int, maps: int = 32) -> int:
    # WSDAN_CAL: BasicConv2D (1x1 conv without bias + BatchNorm) and Linear(maps * channels, classes, bias=False)
    return channels * maps + 2 * maps + maps * channels * classes


def test_parameter_counts_are_the_reference_codes():
    # The reference's ViT-B/16 without class token (classifier='none', no head): patch conv,
    # 196 position embeddings, 12 blocks (2 LayerNorms, q/k/v/out projections, MLP 768-3072-768), final norm.
    block = 2 * 2 * 768 + 4 * (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768)
    vit = (3 * 16 * 16 * 768 + 768) + 196 * 768 + 12 * block + 2 * 768
    assert vit == 85_797_120
    total, trainable = parameter_count("cal", "vit_base_patch16_224", 200)
    assert (total, trainable) == (vit + cal_head_size(768, 200), cal_head_size(768, 200)) == (90_736_960, 4_939_840)
    # torchvision's ResNet-101 features (conv1 .. layer4), 2048 channels.
    total, trainable = parameter_count("cal_cnn", "resnet101", 200)
    assert total == trainable == 42_500_160 + cal_head_size(2048, 200) == 55_672_960


def test_the_vit_runs_without_its_cls_token_and_its_patch_tokens_form_the_row_major_grid():
    backbone = tiny_backbone()
    vit = backbone.vit
    patch_positions = vit.pos_embed[:, 1:].clone()
    model = build_cal(backbone, CLASSES, model_config("cal", cal=CALViTConfig(attention_maps=4))).eval()
    x = images(2)
    with torch.no_grad():
        tokens = vit.patch_embed(x) + patch_positions
        for block in vit.blocks:
            tokens = block(tokens)
        tokens = vit.norm(tokens)  # (2, 16, 32): patches only
        grid = model.feature_maps(x)
    assert grid.shape == (2, 32, 4, 4)
    torch.testing.assert_close(grid[:, :, 1, 2], tokens[:, 1 * 4 + 2])
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), tokens)


def test_the_second_training_pass_sees_the_attention_crops_then_the_attention_drops(monkeypatch):
    model = tiny_cal().train()
    x = images()
    seen = []
    real = model.feature_maps
    monkeypatch.setattr(model, "feature_maps", lambda batch: seen.append(batch) or real(batch))
    torch.manual_seed(7)
    model(x)
    # The same draws by hand, in the forward's order: random maps, two maps per image, thresholds.
    torch.manual_seed(7)
    attention = model.head.attention(real(x))
    torch.empty_like(attention).uniform_(0, 2)
    maps = pick_two_maps(attention)
    crop_fraction, drop_fraction = 0.4 + 0.2 * torch.rand(4), 0.2 + 0.3 * torch.rand(4)
    assert (0.4 <= crop_fraction).all() and (crop_fraction < 0.6).all()
    expected = torch.cat([attention_crop(x, maps[:, :1], crop_fraction, 0.1),
                          attention_drop(x, maps[:, 1:], drop_fraction)])
    assert len(seen) == 2 and torch.equal(seen[0], x)
    torch.testing.assert_close(seen[1], expected)


def test_the_trainer_runs_cal_under_bf16_and_its_checkpoint_keeps_the_stepped_centres(tiny_config):
    config = tiny_config("model.method=cal", "model.cal.attention_maps=4", "model.cal.frozen=false",
                         "train.precision=bf16", "train.epochs=1", "train.run_name=cal")
    result = train(config, progress=False)
    assert result.test_metrics["num_samples"] == 9
    model, _ = restore_model(Path(config.train.output_dir) / "cal" / "checkpoints" / "last.safetensors")
    # The centres move only in extra_loss: the trainer asked for it, and they were saved.
    assert model.centres.shape == (3, 4 * 32) and model.centres.abs().sum(1).gt(0).all()

"""CAL, counterfactual attention learning (Rao et al., ICCV 2021, arXiv 2108.08728), as the GLSim and
ILA papers' reference code runs it (arXiv 2407.12891 Table 4 on ResNet-101; arXiv 2409.11051 Table 1
on ViT-B/16): methods `cal_cnn` (a timm CNN's last feature map) and `cal` (a ViT's patch grid).

- WS-DAN attention (Section 3.1): M = 32 maps from a 1x1 convolution, batch norm and ReLU over the
  feature map; bilinear attention pooling into M x C features, signed square root, L2 normalised;
  a bias-free linear classifier on those features times `logit_scale` (100).
- Counterfactual attention (Section 3.2): the same features pooled by random maps (uniform in
  [0, 2)); the effect, logits minus counterfactual logits, is trained with cross-entropy.
- Centre loss on the pooled features, to class centres that move by beta = 0.05 towards each batch.
- Attention-guided augmentation (Section 3.3): per image one map, drawn with probability growing with
  its mass, crops the image where it exceeds 0.4-0.6 of its maximum; another drops (zeroes) the
  pixels above 0.2-0.5 of its maximum; crops and drops go through the network in a second pass.
- Loss: CE(raw) / 3 + CE(crops, drops) * 2 / 3 + CE(effects) + centre loss (`extra_loss` adds all but
  the engine's cross-entropy of the raw logits, which the training forward returns).
- Test (`test_time`, what `fgir eval` and `fgir predict` get from the model in evaluation mode): the
  average of the raw logits and those of three crops around the mean attention map, on the image and
  on its horizontal mirror (8 encoder passes); `single_crop` (2 passes) or `raw` (1) are cheaper.

On a ViT the CLS token is removed, as in the reference, so the blocks see the patch tokens only.
"""

from fgir.config import ModelConfig
from fgir.methods import register_method
from fgir.models.backbone import Backbone
from fgir.models.cal.config import CALConfig, CALViTConfig
from fgir.models.cal.model import CALCNN, CALViT
from fgir.models.weights import create_headless


def build_cal(backbone: Backbone, num_classes: int, model: ModelConfig) -> CALViT:
    return CALViT(backbone, num_classes, model.cal, zero_init_head=model.zero_init_head)


def build_cal_cnn(model: ModelConfig, num_classes: int, pretrained: bool | None = None) -> CALCNN:
    network = create_headless(
        model.backbone,
        pretrained=model.pretrained if pretrained is None else pretrained,
        weights=model.weights,
        drop_path_rate=model.drop_path,
        **model.backbone_args,
    )
    return CALCNN(network, num_classes, model.cal_cnn, zero_init_head=model.zero_init_head)


register_method("cal", build=build_cal, config=CALViTConfig)
register_method("cal_cnn", build=build_cal_cnn, config=CALConfig, own_network=True)

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fgir.config import ConfigError, load_config
from fgir.methods import build_model
from fgir.models.cnn import CNNClassifier
from fgir.models.weights import InvalidWeightsError

# A ResNet-18 layout shrunk to one block per stage and 8..64 channels: 91 k parameters.
TINY_RESNET = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}
CLASSES = 4


def cnn_config(*extra):
    return load_config(None, ["model.method=cnn", "model.backbone=resnet18.tv_in1k", "model.pretrained=false",
                              f"model.backbone_args={TINY_RESNET}", *extra])


def test_shapes_and_zero_initialised_head():
    model = build_model(cnn_config().model, CLASSES, image_size=32)
    assert isinstance(model, CNNClassifier) and model.network.num_features == 64
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, CLASSES)
    assert model(torch.randn(2, 3, 48, 40)).shape == (2, CLASSES)  # any image size
    assert model.head.weight.abs().sum() == 0


def test_gradient_census_every_parameter_trains():
    torch.manual_seed(0)
    # timm starts each residual branch's last BatchNorm at 0, which blocks the branch's earlier
    # gradients at step 0; zero_init_last=false shows every parameter is wired to the loss.
    args = {**TINY_RESNET, "zero_init_last": False}
    model = build_model(cnn_config("model.zero_init_head=false", f"model.backbone_args={args}").model, CLASSES, 32).train()
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    assert [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_weights_load_from_a_local_file_through_the_shared_loader(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("resnet18", num_classes=1000, **TINY_RESNET)
    path = tmp_path / "resnet.safetensors"
    save_file(source.state_dict(), str(path))
    model = build_model(cnn_config("model.pretrained=true", f"model.weights={path}").model, CLASSES, image_size=32)
    state = model.network.state_dict()
    assert all(torch.equal(state[key], value) for key, value in source.state_dict().items() if not key.startswith("fc."))
    assert not any(key.startswith("fc.") for key in state)  # the file's 1000-class head is dropped
    # build_model(pretrained=False), as when a checkpoint is loaded next: the file is not read.
    path.write_bytes(b"not weights")
    build_model(cnn_config("model.pretrained=true", f"model.weights={path}").model, CLASSES, 32, pretrained=False)
    with pytest.raises(InvalidWeightsError, match="resnet.safetensors: cannot be read"):
        build_model(cnn_config("model.pretrained=true", f"model.weights={path}").model, CLASSES, image_size=32)


def test_a_weight_file_of_another_network_is_refused(tmp_path):
    path = tmp_path / "wide.safetensors"
    save_file(timm.create_model("resnet18", num_classes=10, **{**TINY_RESNET, "channels": [8, 16, 32, 128]}).state_dict(),
              str(path))
    with pytest.raises(InvalidWeightsError, match="wide.safetensors does not fit resnet18.tv_in1k"):
        build_model(cnn_config("model.pretrained=true", f"model.weights={path}").model, CLASSES, image_size=32)


def test_unknown_network_name_suggests_close_ones_when_the_config_loads():
    with pytest.raises(ConfigError, match="config key 'model.backbone': unknown timm model 'resnet51'; did you mean .*resnet50"):
        cnn_config("model.backbone=resnet51")


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = build_model(cnn_config().model, CLASSES, image_size=32).train()
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % CLASSES
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    first = F.cross_entropy(model(images), labels).item()
    for _ in range(8):
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    assert F.cross_entropy(model(images), labels).item() < first

"""The model registry and the model interface: ResNet (2D and 3D), U-Net, the multi-view model."""

import pytest
import torch

from medsight.errors import ConfigError
from medsight.models import create_model, list_models


def test_registry_lists_and_rejects():
    assert {"resnet18", "resnet50", "unet"} <= set(list_models())
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("resnet1000")
    with pytest.raises(ConfigError, match="model.options"):
        create_model("resnet18", no_such_option=1)


@pytest.mark.parametrize("dims,shape", [(2, (2, 3, 64, 64)), (3, (2, 1, 32, 32, 32))])
def test_resnet_interface(dims, shape):
    model = create_model("resnet18", in_channels=shape[1], num_classes=4, spatial_dims=dims).eval()
    x = torch.randn(shape)
    features = model.forward_features(x)
    assert features.shape[:2] == (2, model.num_features) and features.ndim == dims + 2
    assert torch.allclose(model.forward_head(features), model(x))
    assert dict(model.named_modules())[model.cam_layer] is model.layer4
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)


def test_resnet_uses_the_standard_stem():
    # MONAI defaults to a stride-1 first convolution; the ImageNet layout downsamples 4x before layer1
    model = create_model("resnet18")
    assert model.conv1.stride == (2, 2) and model.forward_features(torch.zeros(1, 3, 64, 64)).shape[-1] == 2
    small = create_model("resnet18", stem="small")
    assert small.forward_features(torch.zeros(1, 3, 32, 32)).shape[-1] == 4
    params = sum(p.numel() for p in model.parameters())
    assert 11.1e6 < params < 11.3e6  # torchvision's resnet18 with 2 classes: 11,177,538


def test_unet_shapes():
    model = create_model("unet", channels=(4, 8, 16), num_res_units=0)
    assert model(torch.zeros(1, 3, 32, 48)).shape == (1, 1, 32, 48)


def test_multiview_shares_one_backbone_and_averages_views():
    model = create_model("multiview", in_channels=9, num_classes=2, views=9, backbone="resnet18", width=8).eval()
    x = torch.randn(2, 9, 32, 32)
    per_view = torch.stack([model.backbone(x[:, v:v + 1]) for v in range(9)], 1).mean(1)
    assert torch.allclose(model(x), per_view, atol=1e-5)
    single = create_model("resnet18", in_channels=1, num_classes=2, width=8)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in single.parameters())
    with pytest.raises(ConfigError, match="multiple of views"):
        create_model("multiview", in_channels=10, views=9)

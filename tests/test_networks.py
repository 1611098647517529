"""The networks: the official code's definitions against hand-computed expectations, and the registry."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from gnp import models
from gnp.errors import UserError
from gnp.nets.layers import Conv2dSame, MaxPool2dSame, same_padding


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,classes,size,params", [
    ("ResNet50", 1000, 224, 25_557_032), ("ResNet101", 1000, 224, 44_549_160),
    ("VGG16", 10, 32, 33_638_218), ("VGG16BN", 10, 32, 33_646_666), ("VGG16BN", 1000, 224, 138_365_992),
])
def test_official_parameter_counts_and_output_shapes(name, classes, size, params):
    torch.manual_seed(0)
    model = models.build_model(name, classes, size)
    assert count(model) == params
    if size == 32:
        assert model(torch.randn(2, 3, size, size)).shape == (2, classes)


def test_the_official_resnet_stem_has_no_relu_and_pads_the_tf_way():
    """conv 7×7/2 → BN → max-pool 3×3/2: the pooled stem can be negative (torchvision's, after a ReLU,
    cannot); at 224 px the convolution pads 2 before and 3 after, the max-pool 0 and 1."""
    torch.manual_seed(0)
    ours, theirs = models.build_model("ResNet50", 10, 224).eval(), models.build_model("resnet50", 10, 224).eval()
    x = torch.randn(2, 3, 224, 224)

    def stem(m):
        return m.maxpool(m.relu(m.bn1(m.conv1(x))))

    assert stem(ours).min() < 0 <= stem(theirs).min()
    assert stem(ours).shape == stem(theirs).shape == (2, 64, 56, 56)
    assert isinstance(ours.conv1, Conv2dSame) and isinstance(ours.maxpool, MaxPool2dSame)
    assert [same_padding(224, 7, 2), same_padding(112, 3, 2), same_padding(56, 3, 2)] == [(2, 3), (0, 1), (0, 1)]
    by_hand = F.conv2d(F.pad(x, (2, 3, 2, 3)), ours.conv1.weight, stride=2)
    torch.testing.assert_close(ours.conv1(x), by_hand)
    pooled = F.max_pool2d(F.pad(by_hand, (0, 1, 0, 1), value=-math.inf), 3, 2)
    torch.testing.assert_close(ours.maxpool(by_hand), pooled)
    for layer in (ours.layer2, ours.layer3, ours.layer4):  # each stage's strided 3×3
        assert isinstance(layer[0].conv2, Conv2dSame) and layer[0].conv2.stride == (2, 2)


@pytest.mark.parametrize("name,classes,size", [("ResNet50", 1000, 224), ("VGG16BN", 100, 32)])
def test_official_dense_layers_are_uniform_in_one_over_root_units_with_zero_bias(name, classes, size):
    torch.manual_seed(0)
    dense = [m for m in models.build_model(name, classes, size).modules() if isinstance(m, nn.Linear)]
    for layer in dense:
        bound = 1 / math.sqrt(layer.out_features)
        w = layer.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
        assert abs(w.std().item() - bound / math.sqrt(3)) < 0.02 * bound  # U(−b, b) has std b/√3
        assert torch.count_nonzero(layer.bias) == 0
    assert [layer.out_features for layer in dense][-1] == classes


def test_official_convolutions_are_he_normal_on_fan_out():
    torch.manual_seed(0)
    conv = models.build_model("VGG16BN", 10, 32)[0]
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert abs(conv.weight.std().item() - math.sqrt(2 / fan_out)) < 0.1 * math.sqrt(2 / fan_out)
    assert torch.count_nonzero(conv.bias) == 0


def test_torchvision_names_build_torchvision_networks():
    model = models.build_model("resnet50", 10, 224)
    assert type(model.relu) is nn.ReLU and type(model.conv1) is nn.Conv2d
    assert isinstance(models.build_model("vgg16_bn", 10, 224).avgpool, nn.AdaptiveAvgPool2d)
    assert type(models.build_model("resnet18", 10, 32)) is torchvision.models.ResNet


def test_an_unknown_model_is_one_line_naming_the_choices():
    with pytest.raises(UserError, match="unknown model 'resnet-50'; choose one of: ResNet50, ResNet101"):
        models.build_model("resnet-50", 10, 32)

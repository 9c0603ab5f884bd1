"""The one default-layer finder (introspect.discover.default_target_layer, which models.default_layer calls)
against hard-coded names: torchvision CNNs and transformers, a convolutional head, custom modules.

benchmarks/default_layer_survey.py records its answer for every torchvision classifier."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_gradcam import models
from napari_gradcam.introspect.discover import default_target_layer, stage_outputs
from napari_gradcam.errors import LayerError

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")

# name, input size, the layer explained by default
TORCHVISION = [
    ("resnet18", 64, "layer4"),
    ("vgg16", 64, "features"),
    ("squeezenet1_0", 64, "features"),  # its head is a convolution: the class maps after it are left out
    ("densenet121", 64, "features"),
    ("mobilenet_v3_small", 64, "features"),
    ("efficientnet_b0", 64, "features"),
    ("convnext_tiny", 64, "features"),
    ("vit_b_16", 64, "encoder.layers.encoder_layer_11.ln_1"),  # the tokens the class token last attends to
    ("swin_t", 64, "permute"),  # channels-first view of the last stage
]


@pytest.mark.parametrize("name,size,layer", TORCHVISION, ids=[t[0] for t in TORCHVISION])
def test_torchvision_default_layers(name, size, layer):
    torch.manual_seed(0)
    model = models.build_network(name, 3, 3, input_size=size)
    assert default_target_layer(model, 3, size) == layer
    assert models.default_layer(model, 3, size) == layer
    assert stage_outputs(model, 3, size)[-1] == layer  # the "fine" preset ends at the default layer


class GapNet(nn.Module):
    """conv -> ReLU -> conv -> GAP -> dropout -> linear (a CAM head)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.body = nn.Conv2d(8, 6, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.drop(self.body(self.stem(x)).mean(dim=(2, 3))))


class FcNet(nn.Module):
    """conv -> ReLU -> flatten -> linear (no CAM head)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4 * 16 * 16, 2)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


class ConvHeadNet(nn.Module):
    """SqueezeNet's shape: features, then a head of dropout, a 1 x 1 convolution to class maps, ReLU, GAP."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(8, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return self.classifier(self.features(x)).flatten(1)


class FunctionalHeadNet(GapNet):
    """GapNet with its head in the forward (a weight, no Linear): the last convolution is no head."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 6))

    def forward(self, x):
        return nn.functional.linear(self.body(self.stem(x)).mean(dim=(2, 3)), self.weight)


class PoolingEncoder(nn.Module):
    """A backbone that pools inside its own forward (no pooling module): its maps are still candidates."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x)).mean(dim=(2, 3))


class EncoderNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = PoolingEncoder()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.encoder(x))


@pytest.mark.parametrize("module,layer", [
    (GapNet, "body"),  # the dropout after pooling and the pooled vector are no maps
    (FcNet, "act"),
    (ConvHeadNet, "features"),  # not classifier.2: the head's class maps
    (FunctionalHeadNet, "body"),
    (EncoderNet, "encoder.act"),
])
def test_custom_module_default_layers(module, layer):
    torch.manual_seed(0)
    assert default_target_layer(module(), 3, 16) == layer


def test_a_model_without_maps_has_no_default_layer():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(LayerError, match="give the layer to explain by name"):
        default_target_layer(mlp, 3, 16)
    assert models.default_layer(mlp, 3, 16) == ""
    only_head = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())  # its one map is class maps
    assert models.default_layer(only_head, 3, 16) == ""


def test_timm_vit_attention_projections_are_part_of_its_pooling():
    """timm's attention runs its query/key/value projection as a module whose token output reaches the class
    token; the default is still the tokens entering the last attention, as for torchvision's ViT."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=64)
    assert default_target_layer(vit, 3, 64) == "blocks.11.norm1"
    avg = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=64, global_pool="avg")
    # every token reaches an averaging head (its norm is an identity; the LayerNorm comes after pooling)
    assert default_target_layer(avg, 3, 64) == "blocks"

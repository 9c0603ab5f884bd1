"""The target layer and CAM head found from the module itself agree with the registry, and any
nn.Module classifier is explained through ng.wrap_model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import napari_gradcam as ng
from napari_gradcam.introspect.discover import default_target_layer, find_cam_head
from napari_gradcam.errors import GradCamError, LayerError
from napari_gradcam.models import ARCHITECTURES, build_network


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_discovery_matches_the_registry(name):
    arch = ARCHITECTURES[name]
    size = 224 if name == "alexnet" else max(64, arch.min_input_size)
    model = build_network(name, 3, 1)
    layer = default_target_layer(model, 1, size)
    assert layer == arch.target_layer
    assert find_cam_head(model, layer, 1, size) == arch.cam


class GapNet(nn.Module):
    """conv -> in-place ReLU -> GAP -> dropout -> linear: a CAM head the registry has never seen."""

    def __init__(self, relu_before_pool: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.body = nn.Conv2d(8, 6, 3, padding=1)
        self.relu_before_pool = relu_before_pool
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        a = self.body(self.stem(x))
        if self.relu_before_pool:
            a = torch.relu(a)
        return self.head(self.drop(a.mean(dim=(2, 3))))


class FcNet(nn.Module):
    """conv -> flatten -> linear: no CAM head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 2)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


@pytest.mark.parametrize("relu", [False, True])
def test_custom_gap_head_is_found_and_cam_is_exact(relu):
    torch.manual_seed(0)
    b = ng.wrap_model(GapNet(relu), ["a", "b", "c"], input_size=16)
    assert b.architecture == "custom" and b.target_layer == "body"
    img = np.random.default_rng(1).random((20, 20, 3)).astype(np.float32)
    h = ng.explain(b, img, method="cam", target="all")
    # CAM's spatial mean plus the bias is the logit: the identity that defines it
    x = torch.from_numpy(np.stack([m.raw for m in h])).float()
    logits = b.model(ng_tensor(b, img))[0]
    assert torch.allclose(x.mean(dim=(1, 2)) + b.model.head.bias, logits, atol=1e-5)
    g = ng.explain(b, img, method="gradcam", target="all")
    for cam, grad in zip(h, g):  # Grad-CAM = ReLU(CAM) / (h w) when GAP + linear act on the layer itself
        assert np.allclose(grad.data, cam.data, atol=1e-5) != relu  # a ReLU in between masks the gradient


def ng_tensor(bundle, img):
    from napari_gradcam.preprocess import bundle_tensor

    return bundle_tensor(bundle, [img]).to(bundle.device)


def test_custom_model_without_gap_head_refuses_cam_but_explains_with_gradcam():
    b = ng.wrap_model(FcNet(), ["x", "y"], input_size=16)
    assert b.target_layer == "conv"
    img = np.random.default_rng(2).random((16, 16, 3)).astype(np.float32)
    with pytest.raises(LayerError, match="global-average-pooling"):
        ng.explain(b, img, method="cam")
    h = ng.explain(b, img, method="gradcam")
    assert h.data.shape == (16, 16) and np.isfinite(h.data).all()


def test_wrap_model_checks_the_output_shape():
    with pytest.raises(GradCamError, match=r"must return \(1, 3\) logits"):
        ng.wrap_model(FcNet(), ["a", "b", "c"], input_size=16)
    with pytest.raises(GradCamError, match="torch.nn.Module"):
        ng.wrap_model(lambda x: x, ["a", "b"])


def test_one_probing_pass_answers_every_question_about_layers():
    """The default layer, the stages, the CAM head and the spatial layers all come from ONE forward pass of
    the model (introspect.probe), cached; swapping a module in makes a new probe."""
    import torch

    from napari_gradcam.introspect import cam_features, spatial_layers, stage_outputs

    torch.manual_seed(0)
    model = build_network("resnet18", 3, 1)
    passes = []
    model.register_forward_pre_hook(lambda _m, args: passes.append(tuple(args[0].shape)))
    assert default_target_layer(model, 1, 64) == "layer4"
    assert stage_outputs(model, 1, 64) == ["layer2", "layer3", "layer4"]
    assert find_cam_head(model, "layer4", 1, 64) == ARCHITECTURES["resnet18"].cam
    assert cam_features(model, 1, 64) == ARCHITECTURES["resnet18"].cam  # the outermost layer feeding the head
    assert spatial_layers(model, 1, 64, max_depth=1)[-1] == "layer4" and "avgpool" not in spatial_layers(model, 1, 64)
    assert passes == [(1, 1, 64, 64)]
    assert default_target_layer(model, 1, 32) == "layer3" and len(passes) == 2  # another geometry: its own pass
    # at 32 px layer4 is a 1 x 1 map: no default layer, still the CAM head's features
    assert find_cam_head(model, "layer4", 1, 32) == ARCHITECTURES["resnet18"].cam
    model.fc = torch.nn.Linear(512, 3)
    default_target_layer(model, 1, 64)
    assert len(passes) == 3  # a module swapped in: probed again

"""Any torchvision classifier by name, and timm models: built, saved, loaded, explained.

Tiny inputs and three classes keep this fast; the weights are random (nothing is downloaded).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import napari_gradcam as ng
from napari_gradcam import models
from napari_gradcam.errors import GradCamError
from napari_gradcam.tv_models import classifiers

CLASSES = ["normal", "pneumonia", "covid"]
pytestmark = pytest.mark.usefixtures("torch_one_thread_module")

# beyond the registered nine: name, input size, the target layer found from the module
DOZEN = [
    ("convnext_tiny", 64, "features"),
    ("efficientnet_v2_s", 64, "features"),
    ("regnet_y_400mf", 64, "trunk_output"),
    ("densenet161", 64, "features"),
    ("swin_t", 64, "permute"),  # torchvision's Swin is channels-last inside; `permute` gives (B, C, h, w)
    ("mobilenet_v3_small", 64, "features"),
    ("shufflenet_v2_x0_5", 64, "conv5"),
    ("mnasnet0_5", 64, "layers"),
    ("squeezenet1_1", 64, "features"),
    ("googlenet", 64, "inception5b"),
    ("inception_v3", 96, "Mixed_7a"),  # at 96 px Mixed_7c is 1 x 1: the last map with more is Mixed_7a's
    ("vit_b_32", 64, "encoder.layers.encoder_layer_11.ln_1"),
]


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).random((72, 80)).astype(np.float32)


@pytest.mark.parametrize("name,size,layer", DOZEN, ids=[d[0] for d in DOZEN])
def test_torchvision_model_builds_saves_loads_and_explains(name, size, layer, image, tmp_path):
    torch.manual_seed(0)
    b = ng.build_model(name, CLASSES, in_channels=1, input_size=size)
    assert b.architecture == f"torchvision:{name}"
    assert b.target_layer == layer or b.target_layer.startswith(layer + ".")
    assert models.get_module(b.model, models.first_conv_name(b.model)).in_channels == 1
    path = ng.save_model(b, tmp_path / f"{name}.safetensors")
    loaded = ng.load_model(path, device="cpu")
    assert (loaded.architecture, loaded.target_layer, loaded.input_size) == (b.architecture, b.target_layer, size)
    p = ng.predict(loaded, image)
    np.testing.assert_allclose(p, ng.predict(b, image), atol=1e-6)
    assert p.shape == (3,) and abs(p.sum() - 1) < 1e-5
    if name.startswith("vit_"):
        return  # token outputs are explained once the engine reshapes them to a grid
    h = ng.explain(loaded, image, method="gradcam", target="all")
    data = np.stack([m.data for m in h])
    assert data.shape == (3, *image.shape) and np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1
    assert data.max() > 0  # some class has positive evidence somewhere


@pytest.mark.parametrize("name", ["efficientnet_v2_s", "shufflenet_v2_x0_5"])
def test_cam_head_found_from_the_module_is_exact(name, image):
    """CAM's spatial mean plus the head's bias is the logit (the identity that defines CAM)."""
    from napari_gradcam.engine.methods.cam import cam_head
    from napari_gradcam.preprocess import bundle_tensor

    torch.manual_seed(1)
    b = ng.build_model(name, CLASSES, in_channels=3, input_size=64)
    head = cam_head(b)
    assert head.linear == models.head_name(b.model)
    rgb = np.random.default_rng(3).random((64, 64, 3)).astype(np.float32)
    maps = ng.explain(b, rgb, method="cam", target="all")
    raw = torch.from_numpy(np.stack([m.raw for m in maps])).float()
    with torch.no_grad():
        logits = b.model(bundle_tensor(b, [rgb]))[0]
    bias = models.get_module(b.model, head.linear).bias
    torch.testing.assert_close(raw.mean(dim=(1, 2)) + bias, logits, atol=1e-4, rtol=1e-4)


def test_every_torchvision_classifier_is_accepted_and_adapted():
    """Every name of torchvision.models.list_models builds (on the meta device: no memory) with a
    3-class head and a 1-channel first convolution; RegNet's constructor cannot run there and is built
    for real above."""
    names = classifiers()
    assert len(names) >= 80 and set(models.ARCHITECTURES) - {"simple_cnn"} <= set(names)
    not_on_meta = []
    for name in names:
        canonical = models.canonical_name(name)
        assert canonical == (name if name in models.ARCHITECTURES else f"torchvision:{name}")
        assert models.canonical_name(f"torchvision:{name}") == canonical
        try:
            with torch.device("meta"):
                net = models.build_network(name, 3, 1, input_size=224 if "vit" in name else 64)
        except NotImplementedError:
            not_on_meta.append(name)
            continue
        assert models.get_module(net, models.first_conv_name(net)).in_channels == 1, name
        head = models.get_module(net, models.head_name(net))
        assert getattr(head, "out_features", getattr(head, "out_channels", None)) == 3, name
    assert all(n.startswith("regnet") for n in not_on_meta), not_on_meta
    assert list(ng.list_architectures(all=True))[: len(models.ARCHITECTURES)] == list(models.ARCHITECTURES)
    assert set(ng.list_architectures(all=True)) == set(names) | {"simple_cnn"}


def test_registered_names_stay_plain_and_old_names_load(tmp_path):
    b = ng.build_model("torchvision:resnet18", CLASSES, input_size=32)
    assert b.architecture == "resnet18" and b.target_layer == "layer4"
    assert ng.build_model("ConvNeXt-Tiny", CLASSES, input_size=32).architecture == "torchvision:convnext_tiny"


@pytest.mark.parametrize("name,size,words", [
    ("vit_b_16", 100, ("vit_b_16", "multiple of its 16-pixel patches", "96")),
    ("inception_v3", 48, ("inception_v3", "at least 75")),
    ("maxvit_t", 100, ("maxvit_t", "224")),
])
def test_input_size_a_network_cannot_take_is_one_sentence(name, size, words):
    with pytest.raises(GradCamError) as err:
        ng.build_model(name, CLASSES, input_size=size)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_unknown_name_suggests_near_ones():
    with pytest.raises(GradCamError) as err:
        ng.build_model("convnext_tiney", CLASSES)
    assert "convnext_tiny" in str(err.value) and "timm:NAME" in str(err.value)


def test_pretrained_torchvision_weights_from_a_local_file(tmp_path):
    """ImageNet-shaped weights of any torchvision model: head replaced, RGB kernels summed for 1 channel."""
    import torchvision

    torch.manual_seed(0)
    sd = torchvision.models.shufflenet_v2_x0_5(weights=None).state_dict()
    path = tmp_path / "shufflenet-local.pth"
    torch.save(sd, path)
    b = ng.build_model("shufflenet_v2_x0_5", CLASSES, in_channels=1, input_size=64, pretrained=path)
    torch.testing.assert_close(b.model.conv1[0].weight, sd["conv1.0.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(b.model.stage4[0].branch1[0].weight, sd["stage4.0.branch1.0.weight"])
    assert b.model.fc.weight.shape == (3, 1024)
    assert b.config.mean == [0.449] and b.config.std == [0.226]  # the weights' own normalisation, in gray


# ----------------------------------------------------------------------------- timm
def test_timm_model_builds_saves_loads_and_explains(image, tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    b = ng.build_model("timm:test_efficientnet", CLASSES, in_channels=1, input_size=64)
    cfg = timm.create_model("test_efficientnet").pretrained_cfg
    assert b.architecture == "timm:test_efficientnet"
    assert b.config.mean == pytest.approx([sum(cfg["mean"]) / 3]) and b.config.std == pytest.approx([sum(cfg["std"]) / 3])
    assert b.model.conv_stem.in_channels == 1 and b.model.classifier.out_features == 3
    loaded = ng.load_model(ng.save_model(b, tmp_path / "t.safetensors"), device="cpu")
    np.testing.assert_allclose(ng.predict(loaded, image), ng.predict(b, image), atol=1e-6)
    h = ng.explain(loaded, image, method="gradcam", target="all")
    assert all(m.data.shape == image.shape and np.isfinite(m.data).all() for m in h)
    rgb = ng.build_model("timm:test_efficientnet", CLASSES, in_channels=3, input_size=64)
    assert rgb.config.mean == pytest.approx(list(cfg["mean"]))


def test_timm_vision_transformer_gets_its_size_and_a_token_layer():
    pytest.importorskip("timm")
    b = ng.build_model("timm:test_vit", CLASSES, in_channels=3, input_size=64)
    assert b.target_layer.endswith(".norm1") and b.model.patch_embed.img_size == (64, 64)
    assert ng.predict(b, np.zeros((64, 64, 3), np.float32)).shape == (3,)


def test_timm_state_dict_gets_timm_normalisation(tmp_path):
    pytest.importorskip("timm")
    b = ng.build_model("timm:test_resnet", CLASSES, in_channels=3, input_size=64)
    torch.save(b.model.state_dict(), tmp_path / "t.pth")
    loaded = ng.load_model(tmp_path / "t.pth", architecture="timm:test_resnet", classes=CLASSES, input_size=64)
    assert loaded.in_channels == 3 and loaded.config.mean == b.config.mean
    assert any("pretrained_cfg" in n for n in loaded.notes)


def test_unknown_timm_name():
    pytest.importorskip("timm")
    with pytest.raises(GradCamError) as err:
        ng.build_model("timm:resnet18x", CLASSES)
    assert "timm:resnet18" in str(err.value)
    with pytest.raises(GradCamError, match="never downloads"):
        ng.build_model("timm:hf-hub:timm/resnet18.a1_in1k", CLASSES)


def test_without_timm_installed_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(GradCamError) as err:
        ng.build_model("timm:resnet18", CLASSES, input_size=32)
    msg = str(err.value)
    assert "\n" not in msg and 'pip install "napari-gradcam[timm]"' in msg

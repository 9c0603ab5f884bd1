"""Architecture registry: every name builds, heads and first convolutions fit, weights never download."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import napari_gradcam as ng
from napari_gradcam.errors import GradCamError, LayerError
from napari_gradcam.models import ARCHITECTURES, get_architecture, get_module, imagenet_weights_path

CLASSES = ["a", "b", "c"]
pytestmark = pytest.mark.usefixtures("torch_one_thread")
_INITS = ("normal_", "kaiming_normal_", "kaiming_uniform_", "uniform_", "constant_", "zeros_", "ones_",
          "trunc_normal_", "xavier_uniform_", "xavier_normal_")


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg, f"message is not one line: {msg!r}"
    return msg


@pytest.fixture
def fast_init(monkeypatch):
    """Skip random weight initialisation (VGG's 100M-parameter heads take seconds); shapes are what we test."""
    for name in _INITS:
        monkeypatch.setattr(nn.init, name, lambda t, *a, **k: t)


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """An empty torch hub cache, and any download attempt fails the test."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def forbidden(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", forbidden)
    monkeypatch.setattr(torch.hub, "download_url_to_file", forbidden)
    return hub


def test_list_architectures():
    names = ng.list_architectures()
    expected = {"simple_cnn", "alexnet", "vgg16", "vgg19", "resnet18", "resnet50", "mobilenet_v2",
                "densenet121", "efficientnet_b0"}
    assert expected <= set(names)
    assert names == ng.list_architectures()  # stable order


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_builds_for_1_and_3_channels(arch, fast_init):
    spec = get_architecture(arch)
    size = spec.min_input_size  # the smallest size it claims to support must work
    for channels in (1, 3):
        b = ng.build_model(arch, CLASSES, in_channels=channels, input_size=size)
        assert b.n_classes == 3 and b.in_channels == channels and b.target_layer == spec.target_layer
        assert not b.model.training
        assert get_module(b.model, spec.first_conv).in_channels == channels
        assert get_module(b.model, spec.head).out_features == 3
        seen = {}
        target = get_module(b.model, b.target_layer)
        handle = target.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
        try:
            with torch.no_grad():
                y = b.model(torch.zeros(2, channels, size, size))
        finally:
            handle.remove()
        assert y.shape == (2, 3)
        assert seen["out"].ndim == 4 and seen["out"].shape[0] == 2
        if spec.cam is not None:
            assert get_module(b.model, spec.cam.linear).out_features == 3
            assert get_module(b.model, spec.cam.features) is not None
        if channels == 1:
            layers = b.layers(max_depth=None)
            assert b.target_layer in layers
            assert all(isinstance(n, str) and n for n in layers)
            for name in layers:  # dotted names that resolve
                get_module(b.model, name)
            shallow = b.layers(max_depth=1)
            assert all("." not in n for n in shallow) and set(shallow) <= set(layers)
        del b


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if ARCHITECTURES[a].min_input_size > 16])
def test_too_small_input_size_is_refused(arch):
    spec = get_architecture(arch)
    with pytest.raises(GradCamError) as err:
        ng.build_model(arch, CLASSES, input_size=spec.min_input_size - 1)
    assert str(spec.min_input_size) in one_line(err)


def test_simple_cnn_layers_are_dotted_and_ordered(tiny_bundle):
    layers = tiny_bundle.layers(max_depth=None)
    assert layers[0] == "features.block1.conv1"
    assert "features.block4.relu2" in layers and "features" in layers
    assert layers.index("features.block1.conv1") < layers.index("features.block4.conv1")
    assert "classifier" not in layers and "pool" not in layers  # (B, K, 1, 1) pool is 4D but classifier is not
    assert tiny_bundle.layers(max_depth=2) == [n for n in layers if n.count(".") < 2]


def test_unknown_architecture_names_valid_ones():
    with pytest.raises(GradCamError) as err:
        ng.build_model("resnet1000", CLASSES)
    msg = one_line(err)
    assert "resnet1000" in msg and "simple_cnn" in msg and "resnet18" in msg


def test_architecture_name_is_forgiving():
    assert get_architecture(" ResNet18 ").name == "resnet18"
    assert get_architecture("mobilenet-v2").name == "mobilenet_v2"


@pytest.mark.parametrize("channels", [0, 2, 4])
def test_bad_channel_count(channels):
    with pytest.raises(GradCamError) as err:
        ng.build_model("simple_cnn", CLASSES, in_channels=channels, input_size=32)
    assert str(channels) in one_line(err)


@pytest.mark.parametrize("classes", [["one"], [], ["a", "a"]])
def test_bad_classes(classes):
    with pytest.raises(GradCamError) as err:
        ng.build_model("simple_cnn", classes, input_size=32)
    assert "class" in one_line(err).lower()


def test_unknown_target_layer():
    with pytest.raises(LayerError) as err:
        ng.build_model("simple_cnn", CLASSES, input_size=32, target_layer="features.block9")
    assert "features.block9" in one_line(err)


def test_pretrained_without_cached_file_is_a_clear_error(no_download):
    with pytest.raises(GradCamError) as err:
        ng.build_model("resnet18", CLASSES, pretrained=True, input_size=32)
    msg = one_line(err)
    assert "resnet18" in msg and str(no_download) in msg and "never downloaded" in msg


def test_simple_cnn_has_no_pretrained_weights(no_download):
    with pytest.raises(GradCamError) as err:
        ng.build_model("simple_cnn", CLASSES, pretrained=True, input_size=32)
    assert "simple_cnn" in one_line(err)


@pytest.fixture(scope="module")
def resnet18_imagenet_file(tmp_path_factory):
    """A torchvision resnet18 state dict (random weights) in ImageNet's shape, saved to disk."""
    import torchvision

    torch.manual_seed(0)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18-local.pth"
    torch.save(sd, path)
    return path, sd


def test_pretrained_from_local_file_1_channel(resnet18_imagenet_file, no_download):
    path, sd = resnet18_imagenet_file
    b = ng.build_model("resnet18", CLASSES, in_channels=1, input_size=32, pretrained=path)
    model = b.model
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(model.conv1.weight, sd["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    assert torch.equal(model.bn1.running_var, sd["bn1.running_var"])
    assert model.fc.weight.shape == (3, 512)
    assert b.config.mean == [0.449] and b.config.std == [0.226]


def test_pretrained_from_torch_hub_cache_3_channels(resnet18_imagenet_file, no_download):
    path, sd = resnet18_imagenet_file
    cached = imagenet_weights_path(get_architecture("resnet18"))
    assert cached.is_relative_to(no_download)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    b = ng.build_model("resnet18", CLASSES, in_channels=3, input_size=32, pretrained=True)
    assert torch.equal(b.model.conv1.weight, sd["conv1.weight"])
    assert b.config.mean == [0.485, 0.456, 0.406]


def test_pretrained_file_for_another_architecture(resnet18_imagenet_file, no_download):
    path, _ = resnet18_imagenet_file
    with pytest.raises(GradCamError) as err:
        ng.build_model("resnet50", CLASSES, input_size=32, pretrained=path)
    msg = one_line(err)
    assert "resnet50" in msg and path.name in msg


def test_pretrained_file_that_is_not_weights(tmp_path, no_download):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"\x80\x04not really a pickle" * 10)
    with pytest.raises(GradCamError) as err:
        ng.build_model("resnet18", CLASSES, input_size=32, pretrained=path)
    assert "junk.pth" in one_line(err)

"""ONNX models: converted with onnx2torch, equal to onnxruntime, explained, saved in a bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import napari_gradcam as ng
from napari_gradcam.errors import ModelFileError
from napari_gradcam.preprocess import bundle_tensor

CLASSES = ["normal", "pneumonia", "covid"]
pytestmark = pytest.mark.usefixtures("torch_one_thread_module")


def _export(model: nn.Module, path, size: int = 64, channels: int = 3, nhwc: bool = False, opset: int | None = None):
    shape = (1, size, size, channels) if nhwc else (1, channels, size, size)
    import warnings

    kwargs = {"opset_version": opset} if opset else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the classic exporter's deprecation notes
        torch.onnx.export(model.eval(), torch.randn(*shape), str(path), dynamo=False, input_names=["image"],
                          output_names=["scores"], dynamic_axes={"image": {0: "N"}, "scores": {0: "N"}}, **kwargs)
    return path


def _randomise(model: nn.Module) -> nn.Module:
    """Weights and BatchNorm statistics away from their initial values (so outputs are not all ~0)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if key.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif key.endswith("running_mean"):
                t.normal_(0, 0.1)
            elif t.is_floating_point():
                t.add_(0.05 * torch.randn_like(t))
    return model.eval()


@pytest.fixture(scope="module")
def shufflenet_onnx(tmp_path_factory):
    import torchvision

    model = _randomise(torchvision.models.shufflenet_v2_x0_5(num_classes=3))
    return _export(model, tmp_path_factory.mktemp("onnx") / "shufflenet.onnx"), model


@pytest.fixture(scope="module")
def rgb_images():
    rng = np.random.default_rng(0)
    return [rng.random((70, 90, 3)).astype(np.float32) for _ in range(3)]


def test_predictions_equal_onnxruntime(shufflenet_onnx, rgb_images):
    ort = pytest.importorskip("onnxruntime")
    path, torch_model = shufflenet_onnx
    b = ng.load_model(path, classes=CLASSES, device="cpu")
    assert (b.architecture, b.in_channels, b.input_size) == ("onnx", 3, 64)  # from the graph's input
    assert any("normalised" in n and "ImageNet" in n for n in b.notes)
    x = bundle_tensor(b, rgb_images)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        logits = b.model(x).numpy()
        original = torch_model(x).numpy()
    assert np.abs(expected).max() > 0.05  # real scores, not all ~0
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logits, original, atol=1e-4, rtol=1e-4)
    probs = ng.predict(b, rgb_images)
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(expected), 1).numpy(), atol=1e-5)


def test_every_method_explains_an_onnx_model(shufflenet_onnx, rgb_images):
    path, torch_model = shufflenet_onnx
    b = ng.load_model(path, classes=CLASSES, device="cpu")
    assert b.target_layer == "conv5/conv5/2/Relu" and b.target_layer in b.layers(max_depth=None)
    original = ng.wrap_model(torch_model, CLASSES, 64, 3, b.config.mean, b.config.std, target_layer="conv5")
    for method in ng.list_methods():
        h = ng.explain(b, rgb_images[0], method=method["name"], target="all")
        data = np.stack([m.data for m in h])
        low = -1 if h[0].signed else 0  # signed attributions are in [-1, 1]
        assert data.shape == (3, 70, 90) and np.isfinite(data).all() and low <= data.min() <= data.max() <= 1
        # the same maps as the torchvision network the graph was exported from
        same = ng.explain(original, rgb_images[0], method=method["name"], target="all")
        np.testing.assert_allclose(np.stack([m.raw for m in h]), np.stack([m.raw for m in same]), atol=1e-4,
                                   rtol=1e-3, err_msg=method["name"])
    # CAM found the GAP + linear head in the converted graph: its mean plus the bias is the logit
    cam = ng.explain(b, rgb_images[0], method="cam", target="all")
    from napari_gradcam.engine.methods.cam import cam_head

    linear = b.model.get_submodule(cam_head(b).linear)
    with torch.no_grad():
        logits = b.model(bundle_tensor(b, rgb_images[:1]))[0]
    raw = torch.from_numpy(np.stack([m.raw for m in cam])).float()
    torch.testing.assert_close(raw.mean(dim=(1, 2)) + linear.bias, logits, atol=1e-4, rtol=1e-4)


def test_bundle_round_trip_needs_no_onnx_file(shufflenet_onnx, rgb_images, tmp_path):
    path, _ = shufflenet_onnx
    b = ng.load_model(path, classes=CLASSES, device="cpu")
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(path.read_bytes())
    b = ng.load_model(copy, classes=CLASSES, device="cpu")
    saved = ng.save_model(b, tmp_path / "m.safetensors")
    copy.unlink()
    assert saved.stat().st_size < 1.2 * path.stat().st_size  # the graph carries the unchanged weights once
    loaded = ng.load_model(saved, device="cpu")
    assert (loaded.architecture, loaded.classes, loaded.target_layer) == ("onnx", CLASSES, b.target_layer)
    np.testing.assert_array_equal(ng.predict(loaded, rgb_images), ng.predict(b, rgb_images))
    # fine-tuned weights are saved too, and come back
    with torch.no_grad():
        next(loaded.model.parameters()).mul_(1.5)
    changed = ng.load_model(ng.save_model(loaded, tmp_path / "tuned.safetensors"), device="cpu")
    np.testing.assert_array_equal(ng.predict(changed, rgb_images), ng.predict(loaded, rgb_images))
    assert not np.allclose(ng.predict(changed, rgb_images), ng.predict(b, rgb_images))


class KerasLike(nn.Module):
    """1-channel input, conv -> ReLU -> GAP -> dense -> softmax: what a Keras classifier exports."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.dense = nn.Linear(8, 3)

    def forward(self, x):
        return torch.softmax(self.dense(torch.relu(self.conv(x)).mean(dim=(2, 3))), dim=1)


def test_final_softmax_is_removed_so_the_model_gives_logits(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    path = _export(KerasLike(), tmp_path / "keras.onnx", size=32, channels=1, opset=13)
    b = ng.load_model(path, classes=CLASSES, mean=[0.0], std=[1 / 255], device="cpu")
    assert b.in_channels == 1 and b.config.mean == [0.0] and b.config.origin["softmax_removed"]
    assert any("Softmax" in n for n in b.notes) and not any("normalised" in n for n in b.notes)
    img = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    x = bundle_tensor(b, [img])
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(ng.predict(b, img), expected[0], atol=1e-5)  # softmax once, not twice
    assert np.isfinite(ng.explain(b, img, method="gradcam").data).all()


class ChannelsLast(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):  # (N, H, W, C)
        return self.fc(self.conv(x.permute(0, 3, 1, 2)).mean(dim=(2, 3)))


@pytest.mark.parametrize("case,words", [
    ("no-classes", ("no_classes.onnx", "class names", "--classes")),
    ("class-count", ("count.onnx", "gives 3 class scores", "2 class names")),
    ("channels-last", ("nhwc.onnx", "channels-last", "--inputs-as-nchw image")),
    ("junk", ("junk.onnx", "not a readable ONNX model")),
    ("size-mismatch", ("size.onnx", "input_size=32", "not 64")),
])
def test_onnx_refusals_are_one_sentence(case, words, tmp_path):
    kwargs = {"classes": CLASSES}
    if case == "no-classes":
        path, kwargs = _export(KerasLike(), tmp_path / "no_classes.onnx", 32, 1), {}
    elif case == "class-count":
        path, kwargs = _export(KerasLike(), tmp_path / "count.onnx", 32, 1), {"classes": ["a", "b"]}
    elif case == "channels-last":
        path, kwargs = _export(ChannelsLast(), tmp_path / "nhwc.onnx", 16, 3, nhwc=True), {"classes": ["a", "b"]}
    elif case == "junk":
        path = tmp_path / "junk.onnx"
        path.write_bytes(np.random.default_rng(0).bytes(3000))
    else:
        path, kwargs = _export(KerasLike(), tmp_path / "size.onnx", 32, 1), {"classes": CLASSES, "input_size": 64}
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, device="cpu", **kwargs)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_onnx_through_the_command_line(shufflenet_onnx, tmp_path, capsys):
    from PIL import Image

    from napari_gradcam.cli import main

    path, _ = shufflenet_onnx
    img = tmp_path / "scan.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (50, 60, 3)).astype(np.uint8)).save(img)
    out = tmp_path / "m.safetensors"
    assert main(["convert", str(path), "--classes", *CLASSES, "--out", str(out)]) == 0
    assert main(["explain", str(out), str(img), "--method", "gradcam", "--out", str(tmp_path / "h.tif")]) == 0
    capsys.readouterr()
    assert main(["predict", str(path), str(img), "--classes", *CLASSES, "-q"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("path,predicted,p_normal") and len(lines) == 2

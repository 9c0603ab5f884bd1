"""State dicts everywhere (the command line end to end), what a bundle records about where its network
comes from, old files, custom modules, and refusals that name what a pickle would import."""

from __future__ import annotations

import csv
import json
import os
import pickle
import zipfile
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import napari_gradcam as ng
from napari_gradcam.bundle import FORMAT
from napari_gradcam.cli import main
from napari_gradcam.cli._common import _image as read_image
from napari_gradcam.errors import ModelFileError

CLASSES = ["NORMAL", "PNEUMONIA"]
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
pytestmark = pytest.mark.usefixtures("torch_one_thread_module")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A torchvision resnet18 state dict (2 classes, RGB), images, and a labelled folder."""
    from PIL import Image

    root = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2)
    torch.save(net.state_dict(), root / "r18.pt")
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        (root / "data" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3)).astype(np.uint8)).save(root / "data" / cls / f"{i}.png")
    return root


def _err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_state_dict_through_the_command_line(work, tmp_path, capsys):
    pt, img = work / "r18.pt", work / "data" / "NORMAL" / "0.png"
    bare = ["--arch", "resnet18", "--classes", *CLASSES, "--input-size", "32"]
    # predict: channels read from the weights, ImageNet normalisation, and a note saying so
    csv_path = tmp_path / "p.csv"
    assert main(["predict", str(pt), str(img), *bare, "--csv", str(csv_path), "--device", "cpu"]) == 0
    notes = [line for line in _err_lines(capsys) if line.startswith("note:")]
    assert len(notes) == 1 and "r18.pt" in notes[0] and "ImageNet" in notes[0] and "0.485" in notes[0]
    row = next(csv.DictReader(open(csv_path)))
    expected = ng.predict(ng.load_model(pt, architecture="resnet18", classes=CLASSES, input_size=32, device="cpu",
                                        mean=IMAGENET[0], std=IMAGENET[1]), read_image(str(img)))
    assert float(row["p_NORMAL"]) == pytest.approx(float(expected[0]), abs=1e-5)
    # explain
    heat = tmp_path / "h.tif"
    assert main(["explain", str(pt), str(img), *bare, "--out", str(heat), "--device", "cpu"]) == 0
    assert heat.is_file() and "layer4" in capsys.readouterr().out
    # convert: a bundle that describes itself (and then needs no options)
    out = tmp_path / "r18.safetensors"
    assert main(["convert", str(pt), *bare, "--out", str(out)]) == 0
    b = ng.load_model(out, device="cpu")
    assert (b.architecture, b.classes, b.in_channels, b.input_size) == ("resnet18", CLASSES, 3, 32)
    assert (b.config.mean, b.config.std) == IMAGENET
    capsys.readouterr()
    assert main(["predict", str(out), str(img), "-q"]) == 0
    assert f"{float(expected[0]):.6f}" in capsys.readouterr().out
    # info: architecture, classes, input, normalisation, layer names
    assert main(["info", str(pt), *bare]) == 0
    text = capsys.readouterr().out
    for words in ("architecture", "resnet18", "NORMAL, PNEUMONIA", "32 x 32 px, 3 channels", "0.485",
                  "target layer", "layer4", "CAM head", "layer4 -> global average pooling -> fc", "layer3.1"):
        assert words in text, text
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "resnet18" and "layer2.0.conv1" in info["layers"] and info["notes"] == []
    # evaluate and tile take the same options (tile's --classes picks classes to map: --model-classes)
    assert main(["evaluate", str(pt), str(work / "data"), *bare, "-q"]) == 0
    tile_opts = ["--arch", "resnet18", "--model-classes", *CLASSES, "--input-size", "32"]
    assert main(["tile", str(pt), str(img), *tile_opts, "--out", str(tmp_path / "tiles"), "-q", "--device", "cpu"]) == 0
    assert (tmp_path / "tiles" / "heatmap_NORMAL.tif").is_file()


def test_state_dict_without_a_description_is_one_sentence(work, capsys):
    code = main(["predict", str(work / "r18.pt"), str(work / "data")])
    lines = _err_lines(capsys)
    assert code == 2 and len(lines) == 1 and "--arch" in lines[0] and "--classes" in lines[0]


def test_given_normalisation_is_used_without_a_note(work, capsys):
    b = ng.load_model(work / "r18.pt", architecture="resnet18", classes=CLASSES, mean=[0.5] * 3, std=[0.5] * 3)
    assert b.config.mean == [0.5] * 3 and b.notes == []
    with pytest.raises(ModelFileError, match="both mean and std"):
        ng.load_model(work / "r18.pt", architecture="resnet18", classes=CLASSES, mean=[0.5] * 3)


def test_gray_torchvision_state_dict_gets_one_channel_and_gray_imagenet(tmp_path):
    net = torchvision.models.mobilenet_v3_small(num_classes=2)
    net.features[0][0] = nn.Conv2d(1, 16, 3, 2, 1, bias=False)
    torch.save(net.state_dict(), tmp_path / "gray.pth")
    b = ng.load_model(tmp_path / "gray.pth", architecture="mobilenet_v3_small", classes=CLASSES, input_size=64)
    assert b.architecture == "torchvision:mobilenet_v3_small" and b.in_channels == 1
    assert b.config.mean == [0.449] and b.config.std == [0.226] and "ImageNet" in b.notes[0]


def test_vit_state_dict_gets_its_input_size_from_the_position_embedding(tmp_path):
    b = ng.build_model("vit_b_32", CLASSES, in_channels=3, input_size=64)
    torch.save(b.model.state_dict(), tmp_path / "vit.pt")
    loaded = ng.load_model(tmp_path / "vit.pt", architecture="vit_b_32", classes=CLASSES, device="cpu")
    assert loaded.input_size == 64 and loaded.in_channels == 3
    img = np.random.default_rng(0).random((50, 50, 3)).astype(np.float32)
    np.testing.assert_allclose(ng.predict(loaded, img), ng.predict(b, img), atol=1e-6)


# ----------------------------------------------------------------------------- the bundle format
def _metadata(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_architecture_records_the_source_and_the_oldest_format_that_suffices(tmp_path, tiny_bundle):
    old = ng.save_model(tiny_bundle, tmp_path / "simple.safetensors")
    meta = _metadata(old)
    assert meta["format_version"] == "1" and "origin" not in json.loads(meta["config"])  # old releases read it
    new = ng.save_model(ng.build_model("squeezenet1_1", CLASSES, input_size=32), tmp_path / "sq.safetensors")
    meta = _metadata(new)
    assert meta["format_version"] == "2" and json.loads(meta["config"])["architecture"] == "torchvision:squeezenet1_1"


def test_files_written_before_still_load(tmp_path, tiny_bundle):
    """A version-1 file exactly as the previous release wrote it (no origin), and the shipped demo model."""
    cfg = {k: v for k, v in asdict(tiny_bundle.config).items() if k != "origin"}
    path = tmp_path / "v1.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_bundle.model.state_dict().items()}, str(path),
              metadata={"format": FORMAT, "format_version": "1", "config": json.dumps(cfg)})
    b = ng.load_model(path, device="cpu")
    assert b.architecture == "simple_cnn" and b.config.origin == {} and b.notes == []
    img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    np.testing.assert_array_equal(ng.predict(b, img), ng.predict(tiny_bundle, img))
    from napari_gradcam.data import demo_model_path

    demo = ng.load_model(demo_model_path(), device="cpu")
    assert demo.architecture == "simple_cnn" and demo.target_layer == "features" and demo.n_classes >= 2


class GapNet(nn.Module):
    def __init__(self, width: int = 6):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3)))


def test_custom_bundle_names_its_class_and_loads_into_a_given_module(tmp_path):
    torch.manual_seed(0)
    b = ng.wrap_model(GapNet(), CLASSES, input_size=24)
    assert b.architecture == "custom" and b.config.origin["class"].endswith("test_model_files.GapNet")
    path = ng.save_model(b, tmp_path / "custom.safetensors")
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, device="cpu")
    msg = str(err.value)
    assert "\n" not in msg and "GapNet" in msg and "module=GapNet(...)" in msg
    loaded = ng.load_model(path, module=GapNet(), device="cpu")
    assert (loaded.classes, loaded.input_size, loaded.target_layer) == (CLASSES, 24, b.target_layer)
    img = np.random.default_rng(1).random((24, 24, 3)).astype(np.float32)
    np.testing.assert_array_equal(ng.predict(loaded, img), ng.predict(b, img))
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, module=GapNet(width=5), device="cpu")
    assert "custom.safetensors" in str(err.value) and "size mismatch" in str(err.value)


def test_state_dict_into_a_given_module(work):
    net = torchvision.models.resnet18(num_classes=2)
    b = ng.load_model(work / "r18.pt", module=net, classes=CLASSES, input_size=64, device="cpu")
    assert b.architecture == "custom" and b.in_channels == 3 and b.target_layer == "layer4"
    assert b.config.mean == IMAGENET[0] and b.notes


# ----------------------------------------------------------------------------- refusals name the global
class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("legacy", [False, True])
def test_refused_pickle_names_the_global_it_would_import(tmp_path, legacy):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": _Evil()}, path, _use_new_zipfile_serialization=not legacy)
    assert zipfile.is_zipfile(path) != legacy
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, architecture="simple_cnn", classes=CLASSES)
    assert f"refers to {os.system.__module__}.system" in str(err.value)


def test_refused_protocol_4_pickle_is_called_code_even_unnamed(tmp_path):
    path = tmp_path / "p4.bin"
    path.write_bytes(pickle.dumps({"w": _Evil()}, protocol=4))
    with pytest.raises(ModelFileError, match="could run code"):
        ng.load_model(path, architecture="simple_cnn", classes=CLASSES)


def test_module_without_convolutions_wraps_with_no_default_layer():
    """Pixel attributions still work on an MLP; layer methods then ask for a layer."""
    b = ng.wrap_model(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2)), CLASSES, input_size=16)
    assert b.target_layer == "" and ng.predict(b, np.zeros((16, 16, 3), np.float32)).shape == (2,)

"""Model bundles: exact save/load round trips, plain state dicts, and hostile or broken files refused safely."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import napari_gradcam as ng
from napari_gradcam.bundle import FORMAT, ModelConfig
from napari_gradcam.errors import GradCamError, ModelFileError

CLASSES = ["normal", "pneumonia", "covid"]
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg, f"message is not one line: {msg!r}"
    return msg


def _randomise(bundle: ng.ModelBundle, seed: int = 0) -> ng.ModelBundle:
    """Non-trivial weights and BatchNorm statistics, so a round trip has something to lose."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in bundle.model.state_dict().items():
            if t.is_floating_point():
                vals = torch.rand(t.shape, generator=g) * 0.2
                t.copy_(vals + 0.5 if name.endswith("running_var") else vals - 0.1)
    return bundle


@pytest.fixture(scope="module")
def simple(tmp_path_factory):
    b = _randomise(ng.build_model("simple_cnn", CLASSES, in_channels=1, input_size=32))
    b.config.training = {"epochs": 3, "val_accuracy": 0.75, "history": [{"epoch": 1, "loss": 1.1}]}
    path = ng.save_model(b, tmp_path_factory.mktemp("simple") / "simple.safetensors")
    return b, path


@pytest.fixture(scope="module")
def x_batch():
    return torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(3))


def logits(bundle, x):
    with torch.inference_mode():
        return bundle.model(x.to(bundle.device))


# ----------------------------------------------------------------------------- round trips
def test_simple_cnn_round_trip_is_exact(simple, x_batch):
    b, path = simple
    loaded = ng.load_model(path, device="cpu")
    assert torch.equal(logits(b, x_batch), logits(loaded, x_batch))
    assert loaded.config == b.config
    assert loaded.classes == CLASSES and loaded.target_layer == "features"
    assert loaded.config.training["history"] == [{"epoch": 1, "loss": 1.1}]
    assert not loaded.model.training


def test_resnet18_round_trip_is_exact(tmp_path, x_batch):
    b = _randomise(ng.build_model("resnet18", ["x", "y"], in_channels=1, input_size=32,
                                  mean=[0.3], std=[0.2], target_layer="layer3"), seed=1)
    path = ng.save_model(b, tmp_path / "sub" / "r18.safetensors")  # parent folder is created
    loaded = ng.load_model(path, device="cpu")
    assert torch.equal(logits(b, x_batch), logits(loaded, x_batch))
    assert loaded.config.mean == [0.3] and loaded.config.std == [0.2]
    assert loaded.target_layer == "layer3" and loaded.architecture == "resnet18"
    for k, v in b.model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k


def test_metadata_is_json(simple):
    b, path = simple
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == FORMAT and meta["format_version"] == "1"
    config = json.loads(meta["config"])
    assert config["architecture"] == "simple_cnn" and config["classes"] == CLASSES
    assert config["in_channels"] == 1 and config["input_size"] == 32
    assert config["mean"] == [0.5] and config["std"] == [0.25] and config["target_layer"] == "features"
    assert config["training"]["epochs"] == 3
    assert keys == set(b.model.state_dict())


def test_save_is_atomic_and_overwrites(simple, tmp_path):
    b, _ = simple
    path = tmp_path / "m.safetensors"
    ng.save_model(b, path)
    ng.save_model(b, path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp files left


def test_save_refuses_other_extensions(simple, tmp_path):
    b, _ = simple
    with pytest.raises(GradCamError) as err:
        ng.save_model(b, tmp_path / "m.pt")
    assert ".safetensors" in one_line(err)
    assert not (tmp_path / "m.pt").exists()


def test_load_checks_given_arguments_against_metadata(simple):
    _, path = simple
    assert ng.load_model(path, architecture="simple_cnn", classes=CLASSES, in_channels=1, input_size=32,
                         device="cpu").classes == CLASSES
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, classes=["a", "b"], device="cpu")
    assert "classes" in one_line(err)
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, architecture="resnet18", device="cpu")
    assert "resnet18" in one_line(err)


def test_bundle_helpers(tiny_bundle):
    assert tiny_bundle.class_index("covid") == 2 and tiny_bundle.class_index(1) == 1
    with pytest.raises(GradCamError) as err:
        tiny_bundle.class_index("flu")
    assert "flu" in one_line(err)
    with pytest.raises(GradCamError):
        tiny_bundle.class_index(3)
    assert "simple_cnn" in repr(tiny_bundle)
    assert tiny_bundle.device.type == "cpu"


# ----------------------------------------------------------------------------- plain state dicts
@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module", "both"])
def test_plain_state_dict_loads(simple, tmp_path, x_batch, wrap):
    b, _ = simple
    sd = b.model.state_dict()
    if wrap in ("module", "both"):
        sd = {f"module.{k}": v for k, v in sd.items()}
    obj = {"state_dict": sd, "epoch": 3} if wrap in ("state_dict", "both") else sd
    path = tmp_path / "weights.pt"
    torch.save(obj, path)
    loaded = ng.load_model(path, architecture="simple_cnn", classes=CLASSES, input_size=32, device="cpu")
    assert loaded.in_channels == 1  # inferred from the first convolution
    assert torch.equal(logits(b, x_batch), logits(loaded, x_batch))


def test_plain_state_dict_infers_rgb(tiny_bundle_rgb, tmp_path):
    path = tmp_path / "rgb.pth"
    torch.save(tiny_bundle_rgb.model.state_dict(), path)
    loaded = ng.load_model(path, architecture="simple_cnn", classes=CLASSES, device="cpu")
    assert loaded.in_channels == 3 and loaded.input_size == 224 and loaded.config.mean == [0.5] * 3


def test_foreign_safetensors_with_architecture_loads(simple, tmp_path, x_batch):
    b, _ = simple
    path = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in b.model.state_dict().items()}, str(path))
    loaded = ng.load_model(path, architecture="simple_cnn", classes=CLASSES, input_size=32, device="cpu")
    assert torch.equal(logits(b, x_batch), logits(loaded, x_batch))


def test_plain_state_dict_without_architecture(simple, tmp_path):
    b, _ = simple
    path = tmp_path / "weights.pt"
    torch.save(b.model.state_dict(), path)
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, device="cpu")
    assert "architecture" in one_line(err)


# ----------------------------------------------------------------------------- hostile and broken files
class _Touch:
    """Unpickling this would create a file: the attack a weights file must not be able to make."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _System:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", [_Touch, _System])
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_code_carrying_pickle_is_refused_and_never_runs(tmp_path, payload, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    obj = {"state_dict": {"conv.weight": torch.zeros(2)}, "evil": payload(marker)}
    if writer == "torch.save":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, architecture="simple_cnn", classes=CLASSES, device="cpu")
    msg = one_line(err)
    assert "evil.pt" in msg and "code" in msg
    assert not marker.exists(), "loading the file ran its code"


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_is_refused(tmp_path):
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU()))
    path = tmp_path / "scripted.pt"
    torch.jit.save(scripted, str(path))
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, architecture="simple_cnn", classes=CLASSES, device="cpu")
    assert "TorchScript" in one_line(err)


def test_whole_pickled_module_is_refused(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU()), path)
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, architecture="simple_cnn", classes=CLASSES, device="cpu")
    msg = one_line(err)
    assert "whole.pt" in msg and "state_dict" in msg


def test_truncated_safetensors(simple, tmp_path):
    _, good = simple
    data = good.read_bytes()
    path = tmp_path / "half.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, device="cpu")
    assert "half.safetensors" in one_line(err) and "truncated" in str(err.value)


def test_safetensors_with_cut_header(simple, tmp_path):
    _, good = simple
    path = tmp_path / "cut.safetensors"
    path.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, device="cpu")
    assert "cut.safetensors" in one_line(err)


@pytest.mark.parametrize("name", ["random.safetensors", "random.pt", "random.pth", "random.bin"])
def test_random_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, architecture="simple_cnn", classes=CLASSES, device="cpu")
    assert name in one_line(err)


def test_text_file_named_pt(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n")
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, architecture="simple_cnn", classes=CLASSES, device="cpu")
    assert "notes.pt" in one_line(err)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.touch()
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, device="cpu")
    assert "empty" in one_line(err)


def test_directory(tmp_path):
    with pytest.raises(ModelFileError) as err:
        ng.load_model(tmp_path, device="cpu")
    assert "folder" in one_line(err)


def test_missing_path(tmp_path):
    with pytest.raises(ModelFileError) as err:
        ng.load_model(tmp_path / "nope.safetensors", device="cpu")
    assert "No model file" in one_line(err)


def test_wrong_class_count_for_plain_weights(simple, tmp_path):
    b, _ = simple
    path = tmp_path / "weights.pt"
    torch.save(b.model.state_dict(), path)
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, architecture="simple_cnn", classes=["a", "b"], device="cpu")
    msg = one_line(err)
    assert "2 classes" in msg and "weights.pt" in msg


def test_wrong_architecture_for_plain_weights(simple, tmp_path):
    b, _ = simple
    path = tmp_path / "weights.pt"
    torch.save(b.model.state_dict(), path)
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, architecture="resnet18", classes=CLASSES, device="cpu")
    assert "resnet18" in one_line(err)


def test_unknown_architecture_for_plain_weights(simple, tmp_path):
    b, _ = simple
    path = tmp_path / "weights.pt"
    torch.save(b.model.state_dict(), path)
    with pytest.raises(GradCamError) as err:
        ng.load_model(path, architecture="resnet1000", classes=CLASSES, device="cpu")
    assert "resnet1000" in one_line(err)


def test_state_dict_with_non_tensors(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"a": 1, "b": [1, 2]}, path)
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, architecture="simple_cnn", classes=CLASSES, device="cpu")
    assert "state dict" in one_line(err)


def test_foreign_safetensors_without_architecture(simple, tmp_path):
    b, _ = simple
    path = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in b.model.state_dict().items()}, str(path), metadata={"x": "y"})
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, device="cpu")
    assert "architecture" in one_line(err)


def _resave(b, path, config):
    """Write b's weights with hand-made metadata (as save_model would, but with the config given)."""
    tensors = {k: v.contiguous() for k, v in b.model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": FORMAT, "format_version": "1", "config": config})


def test_damaged_metadata_json(simple, tmp_path):
    b, _ = simple
    path = tmp_path / "damaged.safetensors"
    _resave(b, path, "not json")
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, device="cpu")
    assert "damaged" in one_line(err)


@pytest.mark.parametrize("config", [
    json.dumps(["a", "list"]),
    json.dumps({"architecture": "simple_cnn"}),  # classes missing
    json.dumps({"architecture": "simple_cnn", "classes": CLASSES, "colour": "blue"}),  # unknown key
])
def test_metadata_of_the_wrong_shape(simple, tmp_path, config):
    b, _ = simple
    path = tmp_path / "odd.safetensors"
    _resave(b, path, config)
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, device="cpu")
    assert "odd.safetensors" in one_line(err)


@pytest.mark.parametrize("change, words", [
    ({"classes": ["only"]}, "2 classes"),
    ({"classes": "abc"}, "list"),
    ({"in_channels": 2}, "in_channels"),
    ({"architecture": "transformer9000"}, "transformer9000"),
    ({"input_size": 4}, "input_size"),
    ({"std": [0.0]}, "std"),
    ({"mean": [0.5, 0.5]}, "mean"),
    ({"target_layer": "features.block99"}, "features.block99"),
])
def test_invalid_metadata_values(simple, tmp_path, change, words):
    b, _ = simple
    path = tmp_path / "invalid.safetensors"
    from dataclasses import asdict

    _resave(b, path, json.dumps({**asdict(b.config), **change}))
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, device="cpu")
    msg = one_line(err)
    assert "invalid.safetensors" in msg and words in msg


def test_newer_format_version(simple, tmp_path):
    b, _ = simple
    path = tmp_path / "future.safetensors"
    tensors = {k: v.contiguous() for k, v in b.model.state_dict().items()}
    from dataclasses import asdict

    save_file(tensors, str(path), metadata={"format": FORMAT, "format_version": "99",
                                            "config": json.dumps(asdict(b.config))})
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, device="cpu")
    assert "newer" in one_line(err)


def test_class_count_in_metadata_mismatching_head(simple, tmp_path):
    b, _ = simple
    from dataclasses import asdict

    path = tmp_path / "mismatch.safetensors"
    _resave(b, path, json.dumps({**asdict(b.config), "classes": ["a", "b"]}))
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, device="cpu")
    msg = one_line(err)
    assert "2 classes" in msg and "mismatch.safetensors" in msg


def test_nan_weights_are_refused(simple, tmp_path):
    b, _ = simple
    from dataclasses import asdict

    tensors = {k: v.clone().contiguous() for k, v in b.model.state_dict().items()}
    tensors["classifier.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(tensors, str(path), metadata={"format": FORMAT, "format_version": "1",
                                            "config": json.dumps(asdict(b.config))})
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, device="cpu")
    assert "NaN" in one_line(err)


def test_nan_batchnorm_statistics_are_refused(simple, tmp_path):
    b, _ = simple
    from dataclasses import asdict

    tensors = {k: v.clone().contiguous() for k, v in b.model.state_dict().items()}
    tensors["features.block1.bn1.running_var"][0] = float("inf")
    path = tmp_path / "nanbuf.safetensors"
    save_file(tensors, str(path), metadata={"format": FORMAT, "format_version": "1",
                                            "config": json.dumps(asdict(b.config))})
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, device="cpu")
    assert "NaN" in one_line(err)


def test_model_config_validate_fills_target_layer():
    c = ModelConfig("ResNet18", ["a", "b"], in_channels=1, input_size=32)
    c.validate()
    assert c.architecture == "resnet18" and c.target_layer == "layer4"

"""Issue 15, family 3: a NaN is not an answer.

A model file whose BatchNorm variance is negative or whose weights are NaN is refused on load, naming
the tensor.  A model whose weights overflow float32 (finite in the file, infinite after two layers)
loads, but every path that would answer (predict, explain, tiled heatmaps, feature maps, evaluation,
training's validation) refuses with one sentence naming the model and the first layer whose output was
not finite; the CLI exits 2 and writes nothing.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import cli_error, save_png, snapshot, temp_files
from safetensors.torch import save_file

import napari_gradcam as ng
from napari_gradcam.bundle import FORMAT
from napari_gradcam.errors import ModelFileError, NumericalError
from napari_gradcam.numerics import check_maps, first_non_finite_layer

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")
CLASSES = ["normal", "pneumonia", "covid"]
IMG = np.random.default_rng(0).random((40, 40)).astype(np.float32)


def _bundle(seed: int = 0):
    torch.manual_seed(seed)
    return ng.build_model("simple_cnn", CLASSES, in_channels=1, input_size=32, device="cpu")


def _write(bundle, path: Path, change=None) -> Path:
    """Save ``bundle`` with its tensors changed by ``change(tensors)``, bypassing save_model's model."""
    tensors = {k: v.detach().clone().contiguous() for k, v in bundle.model.state_dict().items()}
    if change is not None:
        change(tensors)
    save_file(tensors, str(path), metadata={"format": FORMAT, "format_version": "1",
                                            "config": json.dumps(asdict(bundle.config))})
    return path


def _overflowing(tensors) -> None:
    tensors["features.block1.conv1.weight"] *= 1e30  # finite, 1e30 after the first layer
    tensors["features.block1.conv2.weight"] *= 1e30  # 1e60: infinite in float32


@pytest.fixture(scope="module")
def overflow_file(tmp_path_factory) -> Path:
    return _write(_bundle(), tmp_path_factory.mktemp("m") / "overflow.safetensors", _overflowing)


OVERFLOW_WORDS = ("simple_cnn model", "NaN or infinite", "features.block1.conv2 (Conv2d)")


# ----------------------------------------------------------------------------- on load
@pytest.mark.parametrize("key, value, words", [
    ("features.block1.bn1.running_var", -1.0, ("negative BatchNorm running variance", "features.block1.bn1.running_var",
                                               "1 of 16 channels")),
    ("features.block2.bn2.running_var", float("nan"), ("NaN or infinite weights", "features.block2.bn2.running_var")),
    ("features.block1.conv1.weight", float("inf"), ("NaN or infinite weights", "features.block1.conv1.weight")),
    ("classifier.bias", float("nan"), ("NaN or infinite weights", "classifier.bias")),
])
def test_broken_statistics_and_weights_are_refused_on_load(tmp_path, key, value, words):
    def change(t):
        t[key].view(-1)[0] = value

    path = _write(_bundle(), tmp_path / "bad.safetensors", change)
    with pytest.raises(ModelFileError) as err:
        ng.load_model(path, device="cpu")
    msg = str(err.value)
    assert msg.startswith("bad.safetensors ") and "\n" not in msg
    for w in words:
        assert w in msg


def test_the_cli_refuses_a_negative_variance_and_writes_nothing(tmp_path, capsys):
    def change(t):
        t["features.block1.bn1.running_var"][3] = -0.5

    model = _write(_bundle(), tmp_path / "neg.safetensors", change)
    image = save_png(tmp_path / "scan.png")
    before = snapshot(tmp_path)
    cli_error(capsys, ["predict", model, image, "--csv", tmp_path / "p.csv"], "negative BatchNorm running variance")
    cli_error(capsys, ["explain", model, image, "--out", tmp_path / "h.tif"], "features.block1.bn1.running_var")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- on every answering path
def test_overflowing_weights_load_but_never_answer(overflow_file):
    b = ng.load_model(overflow_file, device="cpu")  # every stored value is finite
    for call in (lambda: ng.predict(b, IMG), lambda: ng.predict(b, [IMG, IMG]),
                 lambda: ng.explain(b, IMG, method="gradcam"), lambda: ng.explain(b, IMG, method="cam"),
                 lambda: ng.explain(b, IMG, method="gradcam++", target="all"),
                 lambda: ng.explain(b, IMG, shifts=2),
                 lambda: ng.tiled_heatmaps(b, IMG, tile=32),
                 lambda: ng.tiled_heatmaps(b, np.zeros((300, 300), np.float32), tile=64, mode="fullconv"),
                 lambda: ng.feature_maps(b, IMG, layer="features.block2")):
        with pytest.raises(NumericalError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and "NaN or infinite" in msg and "simple_cnn model" in msg, msg


def test_the_first_non_finite_layer_is_named(overflow_file):
    b = ng.load_model(overflow_file, device="cpu")
    with pytest.raises(NumericalError) as err:
        ng.predict(b, IMG)
    assert str(err.value) == (
        "The simple_cnn model gave NaN or infinite scores for this image, first at layer features.block1.conv2 "
        "(Conv2d); its weights or BatchNorm statistics are broken, so no answer is given.")
    x = torch.zeros((1, 1, 32, 32))
    assert first_non_finite_layer(b.model, x + 1) == ("features.block1.conv2", "Conv2d")
    assert first_non_finite_layer(_bundle().model, x) is None


def test_statistics_broken_in_memory_are_caught_at_the_answer():
    """A bundle changed after loading (no load check ran) still gives no NaN answer."""
    b = _bundle()
    with torch.no_grad():
        b.model.features.block2.bn1.running_var[0] = -1.0
    with pytest.raises(NumericalError, match=r"first at layer features.block2.bn1 \(BatchNorm2d\)"):
        ng.predict(b, IMG)


def test_the_cli_exits_2_and_keeps_previous_outputs(overflow_file, tmp_path, capsys):
    image = save_png(tmp_path / "scan.png")
    data = tmp_path / "data"
    for c in CLASSES:
        save_png(data / c / f"{c}.png", seed=len(c))
    (tmp_path / "heat.tif").write_bytes(b"previous heatmap")
    (tmp_path / "p.csv").write_text("previous predictions\n")
    before = snapshot(tmp_path)
    for argv in (["predict", overflow_file, image, "--csv", tmp_path / "p.csv", "-q"],
                 ["explain", overflow_file, image, "--out", tmp_path / "heat.tif"],
                 ["tile", overflow_file, image, "--tile", "32", "--out", tmp_path / "tiles", "-q"],
                 ["evaluate", overflow_file, data, "--json", tmp_path / "r.json", "-q"]):
        cli_error(capsys, argv, *OVERFLOW_WORDS)
        assert snapshot(tmp_path) == before and temp_files(tmp_path) == []


def test_training_validation_refuses_nan_scores(overflow_file):
    """The validation pass of training (evaluate_arrays) stops at NaN scores instead of reporting metrics."""
    from napari_gradcam.train import evaluate_arrays

    b = ng.load_model(overflow_file, device="cpu")
    batches = [(torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 0]))]
    with pytest.raises(NumericalError, match="validation images.*features.block1.conv2"):
        evaluate_arrays(b.model, batches, torch.device("cpu"), contextlib.nullcontext)


def test_a_healthy_model_answers(tmp_path, capsys):
    b = _bundle()
    p = ng.predict(b, IMG)
    assert np.isfinite(p).all() and abs(p.sum() - 1) < 1e-5
    assert np.isfinite(ng.explain(b, IMG).data).all()


def test_maps_are_checked_with_the_method_and_layer():
    b = _bundle()
    maps = torch.zeros((1, 2, 4, 4))
    check_maps(b, maps, "gradcam", "features.block2")
    maps[0, 1, 2, 2] = float("nan")
    with pytest.raises(NumericalError) as err:
        check_maps(b, maps, "gradcam++", "features.block2")
    assert str(err.value).startswith("The gradcam++ map at layer features.block2 of the simple_cnn model holds NaN")

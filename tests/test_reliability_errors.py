"""Issue 15, family 4: one error family.

Every error a user can cause through the API is a ``napari_gradcam.errors`` class with one printable
sentence naming the argument: booleans are not class indices, 1.5 is not an index or a batch size, NaN
is not a setting, devices that cannot run are refused with what can.  Command-line numbers are checked
by argparse types (one usage line, exit 2) or by TrainConfig before anything is read or written.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from reliability_helpers import cli_error, save_png, save_tiny_model, snapshot

import napari_gradcam as ng
from napari_gradcam.errors import GradCamError, GradCamWarning, ParameterError
from napari_gradcam.train import TrainConfig
from napari_gradcam.validate import check_bool, check_int, check_number

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")
IMG = np.random.default_rng(0).random((40, 40)).astype(np.float32)


def _api_cases(b):
    return {
        "target=True": (lambda: ng.explain(b, IMG, target=True), ParameterError, "True"),
        "target=False": (lambda: ng.explain(b, IMG, target=False), ParameterError, "False"),
        "target=1.5": (lambda: ng.explain(b, IMG, target=1.5), ParameterError, "1.5"),
        "target=1.0": (lambda: ng.explain(b, IMG, target=1.0), ParameterError, "1.0"),
        "target=nan": (lambda: ng.explain(b, IMG, target=float("nan")), ParameterError, "nan"),
        "target=[0, True]": (lambda: ng.explain(b, IMG, target=[0, True]), ParameterError, "True"),
        "target={}": (lambda: ng.explain(b, IMG, target={}), ParameterError, "{}"),
        "target=7": (lambda: ng.explain(b, IMG, target=7), GradCamError, "out of range"),
        "target='flu'": (lambda: ng.explain(b, IMG, target="flu"), GradCamError, "Unknown class 'flu'"),
        "batch_size=1.5": (lambda: ng.predict(b, IMG, batch_size=1.5), ParameterError, "batch_size"),
        "batch_size=True": (lambda: ng.predict(b, IMG, batch_size=True), ParameterError, "batch_size"),
        "batch_size=0": (lambda: ng.predict(b, IMG, batch_size=0), ParameterError, "at least 1"),
        "batch_size='8'": (lambda: ng.predict(b, IMG, batch_size="8"), ParameterError, "'8'"),
        "classes=True": (lambda: ng.tiled_heatmaps(b, IMG, classes=True), ParameterError, "classes"),
        "classes=1.5": (lambda: ng.tiled_heatmaps(b, IMG, classes=1.5), ParameterError, "classes"),
        "classes=[True]": (lambda: ng.tiled_heatmaps(b, IMG, classes=[True]), ParameterError, "True"),
        "classes=9": (lambda: ng.tiled_heatmaps(b, IMG, classes=9), GradCamError, "Top-k"),
        "tile=33.5": (lambda: ng.tiled_heatmaps(b, IMG, tile=33.5), ParameterError, "tile size"),
        "overlap=nan": (lambda: ng.tiled_heatmaps(b, IMG, overlap=math.nan), ParameterError, "Overlap"),
        "overlap='0.5'": (lambda: ng.tiled_heatmaps(b, IMG, overlap="0.5"), ParameterError, "Overlap"),
        "overlap=0.99": (lambda: ng.tiled_heatmaps(b, IMG, overlap=0.99), ParameterError, "between 0 and 0.95"),
        "tiled batch_size=1.5": (lambda: ng.tiled_heatmaps(b, IMG, batch_size=1.5), ParameterError, "batch_size"),
        "n=True": (lambda: ng.feature_maps(b, IMG, n=True), ParameterError, "feature maps"),
        "n=2.5": (lambda: ng.feature_maps(b, IMG, n=2.5), ParameterError, "feature maps"),
        "shifts=1.5": (lambda: ng.explain(b, IMG, shifts=1.5), GradCamError, "shifts"),
        "method=None": (lambda: ng.explain(b, IMG, method=None), GradCamError, "Unknown method"),
        "device='meta'": (lambda: b.to("meta"), ParameterError, "'meta' cannot run a model here"),
        "device='xpu'": (lambda: b.to("xpu"), ParameterError, "'xpu' cannot run a model here"),
        "device=0": (lambda: b.to(0), ParameterError, "device must be a name"),
        "device='gpu please'": (lambda: b.to("gpu please"), ParameterError, "Unknown device 'gpu please'"),
        "build in_channels=True": (lambda: ng.build_model("simple_cnn", ["a", "b"], in_channels=True, input_size=32),
                                   ParameterError, "in_channels"),
        "build input_size=32.5": (lambda: ng.build_model("simple_cnn", ["a", "b"], input_size=32.5),
                                  ParameterError, "input_size"),
        "build classes='ab'": (lambda: ng.build_model("simple_cnn", "ab", input_size=32), ParameterError, "'ab'"),
        "build classes=True": (lambda: ng.build_model("simple_cnn", True, input_size=32), ParameterError, "True"),
        "build device='meta'": (lambda: ng.build_model("simple_cnn", ["a", "b"], input_size=32, device="meta"),
                                ParameterError, "meta"),
        "predict(module)": (lambda: ng.predict(b.model, IMG), ParameterError, "ModelBundle"),
        "explain(None)": (lambda: ng.explain(None, IMG), ParameterError, "ModelBundle"),
        "load_model(None)": (lambda: ng.load_model(None), ParameterError, "path of a model file"),
        "value_range_ nan": (lambda: ng.tiled_heatmaps(b, IMG, value_range_=(math.nan, 1)), GradCamError, "finite"),
    }


@pytest.fixture(scope="module")
def bundle():
    import torch

    torch.manual_seed(0)
    return ng.build_model("simple_cnn", ["normal", "pneumonia", "covid"], in_channels=1, input_size=32)


def test_every_api_mistake_is_one_sentence_of_the_family(bundle):
    failures = []
    for name, (call, cls, words) in _api_cases(bundle).items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", GradCamWarning)
                call()
        except cls as e:
            msg = str(e)
            if not (msg.isprintable() and msg.endswith(".") and words in msg):
                failures.append(f"{name}: {msg!r}")
        except Exception as e:  # noqa: BLE001 - what the test is about
            failures.append(f"{name}: {type(e).__name__}: {e}")
        else:
            failures.append(f"{name}: accepted")
    assert not failures, "\n".join(failures)


def test_valid_spellings_still_work(bundle):
    assert ng.explain(bundle, IMG, target=np.int64(1)).target == "pneumonia"
    assert ng.explain(bundle, IMG, target="covid").target_index == 2
    assert len(ng.explain(bundle, IMG, target=[0, np.int32(2)])) == 2
    assert ng.predict(bundle, IMG, batch_size=np.int64(4)).shape == (3,)
    assert ng.tiled_heatmaps(bundle, IMG, tile=np.int64(32), overlap=np.float32(0.25), classes=np.int64(2)).heatmaps.shape[0] == 2
    assert ng.resolve_device(" CPU ".strip().lower()).type == "cpu"


def test_parameter_errors_are_value_errors():
    """Code that catches ValueError (the standard library's convention) still catches them."""
    with pytest.raises(ValueError):
        check_int(1.5, "k")
    assert issubclass(ParameterError, GradCamError)


def test_the_checks_themselves():
    assert check_int(np.int16(3), "k", 1) == 3 and type(check_int(np.int16(3), "k")) is int
    assert check_number(np.float32(0.5), "x", 0, 1) == 0.5
    assert check_bool(np.bool_(True), "flag") is True
    for bad in (True, 2.0, "3", None, [1]):
        with pytest.raises(ParameterError, match="k must be a whole number"):
            check_int(bad, "k")
    for bad, words in ((math.inf, "finite"), (math.nan, "finite"), (-0.1, "between 0 and 1"), (True, "a number")):
        with pytest.raises(ParameterError, match=words):
            check_number(bad, "x", 0, 1)
    with pytest.raises(ParameterError, match="flag must be True or False, not 1"):
        check_bool(1, "flag")
    with pytest.raises(ParameterError, match="at least 4096"):
        check_int(2, "side", 4096)


# ----------------------------------------------------------------------------- TrainConfig
@pytest.mark.parametrize("field, value, words", [
    ("batch_size", 1.5, "batch_size must be a whole number"),
    ("batch_size", 0, "batch_size must be at least 1"),
    ("epochs", True, "epochs must be a whole number"),
    ("steps_per_epoch", -1, "steps_per_epoch must be at least 1"),
    ("warmup_epochs", math.nan, "warmup_epochs must be a finite number"),
    ("warmup_epochs", -1.0, "warmup_epochs must be 0 or more"),
    ("seed", -1, "seed must be between 0 and 4294967295"),
    ("lr", math.nan, "The learning rate must be a finite number"),
    ("lr", 0.0, "The learning rate must be greater than 0"),
    ("val_fraction", 1.0, "The validation fraction must be less than 1"),
    ("weight_decay", -1e-4, "weight_decay must be 0 or more"),
    ("label_smoothing", 1.0, "label_smoothing must be less than 1"),
    ("num_workers", -2, "num_workers must be 0 or more"),
    ("max_minutes", math.inf, "max_minutes must be a finite number"),
    ("erase_grid", 0, "erase_grid must be at least 1"),
    ("freeze_epochs", 0.5, "freeze_epochs must be a whole number"),
])
def test_train_config_refuses_bad_numbers(field, value, words, tmp_path):
    cfg = TrainConfig(data_dir=str(tmp_path), out=str(tmp_path / "m.safetensors"), **{field: value})
    with pytest.raises(ParameterError) as err:
        cfg.validate()
    assert words in str(err.value) and str(err.value).isprintable()


# ----------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = save_tiny_model(root / "m.safetensors")
    image = save_png(root / "scan.png")
    data = root / "data"
    for c in ("normal", "pneumonia", "covid"):
        for i in range(2):
            save_png(data / c / f"{c}{i}.png", seed=i)
    return root, model, image, data


@pytest.mark.parametrize("args, words", [
    (["predict", "{model}", "{image}", "--batch-size", "0"], ["--batch-size", "at least 1, not 0"]),
    (["predict", "{model}", "{image}", "--batch-size", "-1"], ["--batch-size", "at least 1, not -1"]),
    (["predict", "{model}", "{image}", "--batch-size", "1.5"], ["--batch-size", "whole number"]),
    (["evaluate", "{model}", "{data}", "--batch-size", "0"], ["--batch-size"]),
    (["tile", "{model}", "{image}", "--out", "{root}/t", "--batch-size", "0"], ["--batch-size"]),
    (["tile", "{model}", "{image}", "--out", "{root}/t", "--tile", "-8"], ["--tile", "at least 1"]),
    (["tile", "{model}", "{image}", "--out", "{root}/t", "--overlap", "nan"], ["--overlap", "finite"]),
    (["explain", "{model}", "{image}", "--out", "{root}/h.tif", "--alpha", "nan"], ["--alpha", "finite"]),
    (["explain", "{model}", "{image}", "--out", "{root}/h.tif", "--alpha", "1.5"], ["--alpha", "between 0 and 1"]),
    (["explain", "{model}", "{image}", "--out", "{root}/h.tif", "--device", "xpu"], ["'xpu' cannot run", "cpu"]),
    (["predict", "{model}", "{image}", "--device", "meta"], ["'meta' cannot run", "cpu"]),
    (["localize", "{model}", "{data}", "{data}", "--tolerance", "-5"], ["--tolerance", "0 or more, not -5"]),
    (["localize", "{model}", "{data}", "{data}", "--level", "inf"], ["--level", "finite"]),
    (["train", "{data}", "--out", "{root}/n.safetensors", "--batch-size", "0"], ["batch_size must be at least 1"]),
    (["train", "{data}", "--out", "{root}/n.safetensors", "--steps-per-epoch", "-1"], ["steps_per_epoch must be at least 1"]),
    (["train", "{data}", "--out", "{root}/n.safetensors", "--warmup-epochs", "nan"], ["warmup_epochs must be a finite"]),
    (["train", "{data}", "--out", "{root}/n.safetensors", "--seed", "-1"], ["seed must be between 0 and"]),
    (["train", "{data}", "--out", "{root}/n.safetensors", "--lr", "nan"], ["learning rate must be a finite"]),
    (["train", "{data}", "--out", "{root}/n.safetensors", "--val-fraction", "0"], ["validation fraction"]),
    (["train", "{data}", "--out", "{root}/n.safetensors", "--workers", "-1"], ["num_workers must be 0 or more"]),
    (["train", "{data}", "--out", "{root}/n.safetensors", "--device", "xpu"], ["'xpu' cannot run"]),
])
def test_command_line_numbers_are_one_line(args, words, cli_files, capsys):
    root, model, image, data = cli_files
    argv = [a.format(root=root, model=model, image=image, data=data) for a in args]
    before = snapshot(root)
    cli_error(capsys, argv, *words)
    assert snapshot(root) == before  # nothing read into an output, nothing written

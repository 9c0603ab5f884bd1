"""Every CLI command on small inputs, through main([...]); user errors are exit 2 and one line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from napari_gradcam.cli import build_parser, main

COMMANDS = ("train", "evaluate", "predict", "explain", "tile", "localize", "demo")


pytestmark = pytest.mark.usefixtures("torch_one_thread_module")  # tiny models: no OpenMP spinning


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from napari_gradcam.phantoms import write_dataset

    return write_dataset(tmp_path_factory.mktemp("cli") / "data", n_per_class=12, size=40, seed=5)


@pytest.fixture(scope="module")
def model(phantoms, tmp_path_factory):
    """A model trained through the CLI (1 short epoch)."""
    out = tmp_path_factory.mktemp("cli_model") / "m.safetensors"
    code = main(["train", str(phantoms), "--out", str(out), "--image-size", "32", "--epochs", "2",
                 "--batch-size", "8", "--lr", "3e-3", "--device", "cpu", "-q"])
    assert code == 0
    return out


def _one_line_error(capsys, code, *words):
    err = capsys.readouterr().err.strip()
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], err
    return lines[0]


def test_help_teaches(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in COMMANDS:
        assert cmd in out
    assert "examples:" in out
    for cmd in COMMANDS:
        assert main([cmd, "--help"]) == 0
        text = capsys.readouterr().out
        assert "usage: napari-gradcam " + cmd in text
    assert main(["--version"]) == 0


def test_help_is_fast_to_import():
    """`napari-gradcam --help` must not import torch."""
    import subprocess
    import sys

    code = ("import sys; from napari_gradcam.cli import main; rc = main(['--help']); "
            "print('torch' in sys.modules, 'napari' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"


def test_usage_errors_are_one_line(capsys):
    _one_line_error(capsys, main(["train"]), "required")
    _one_line_error(capsys, main(["explain", "m.safetensors", "x.png", "--out", "h.tif", "--method", "lime"]), "invalid choice")
    _one_line_error(capsys, main(["frobnicate"]), "invalid choice")


def test_train_writes_best_and_last(model, capsys):
    import napari_gradcam as ng

    assert model.is_file() and model.with_name("m.last.safetensors").is_file()
    b = ng.load_model(model, device="cpu")
    assert b.classes == ["covid", "normal", "pneumonia"] and b.input_size == 32
    assert b.config.training["recipe"]["epochs"] == 2


def test_train_user_errors(tmp_path, capsys):
    out = str(tmp_path / "m.safetensors")
    _one_line_error(capsys, main(["train", str(tmp_path / "missing"), "--out", out]), "No data folder")
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, main(["train", str(tmp_path / "empty"), "--out", out, "-q"]), "No readable images")
    from napari_gradcam.phantoms import write_dataset

    one = write_dataset(tmp_path / "one", n_per_class=3, size=24, classes=("covid",))
    _one_line_error(capsys, main(["train", str(one), "--out", out, "-q"]), "one class")
    _one_line_error(capsys, main(["train", str(one), "--out", str(tmp_path / "m.pt"), "-q"]), ".safetensors")


def test_train_progress_and_resume(phantoms, model, tmp_path, capsys):
    out = tmp_path / "r.safetensors"
    code = main(["train", str(phantoms), "--out", str(out), "--resume", str(model.with_name("m.last.safetensors")),
                 "--epochs", "3", "--steps-per-epoch", "2", "--device", "cpu"])
    assert code == 0
    captured = capsys.readouterr()
    assert "resumed" in captured.err and "epoch 3/3" in captured.err
    assert captured.out.strip().endswith("r.safetensors")


def test_evaluate_json_and_plot(model, phantoms, tmp_path, capsys):
    rep, png, pred = tmp_path / "r.json", tmp_path / "r.png", tmp_path / "p.csv"
    code = main(["evaluate", str(model), str(phantoms), "--json", str(rep), "--plot", str(png),
                 "--predictions", str(pred), "-q"])
    assert code == 0
    out = capsys.readouterr().out
    assert "balanced accuracy" in out and "confusion matrix" in out
    r = json.loads(rep.read_text())
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity", "confusion_matrix", "classes"):
        assert key in r
    assert np.sum(r["confusion_matrix"]) == 36
    assert png.read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(pred.open()))
    assert len(rows) == 36 and {"path", "label", "predicted", "p_covid"} <= set(rows[0])


def test_evaluate_user_errors(model, tmp_path, capsys):
    _one_line_error(capsys, main(["evaluate", str(tmp_path / "nope.safetensors"), str(tmp_path)]), "No model file")
    (tmp_path / "cats").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "cats" / "a.png")
    _one_line_error(capsys, main(["evaluate", str(model), str(tmp_path), "-q"]), "No readable images of the model's classes")
    _one_line_error(capsys, main(["evaluate", str(model), str(tmp_path / "missing"), "-q"]), "No data folder")


def test_predict_csv(model, phantoms, tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"nope")
    out = tmp_path / "pred.csv"
    code = main(["predict", str(model), str(phantoms / "covid"), str(phantoms / "normal" / "normal_0000.png"),
                 str(tmp_path / "bad.png"), "--csv", str(out), "-q"])
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 13
    p = np.array([[float(r[f"p_{c}"]) for c in ("covid", "normal", "pneumonia")] for r in rows])
    assert np.allclose(p.sum(1), 1, atol=1e-4)
    assert "bad.png" in capsys.readouterr().err
    # stdout without --csv
    assert main(["predict", str(model), str(phantoms / "normal" / "normal_0001.png"), "-q"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("path,predicted,p_covid") and len(lines) == 2
    _one_line_error(capsys, main(["predict", str(model), str(tmp_path / "nothing_here")]), "No image files")


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcam++"])
def test_explain_tiff_and_overlay(model, phantoms, tmp_path, capsys, method):
    import tifffile
    from PIL import Image

    img = phantoms / "pneumonia" / "pneumonia_0000.png"
    heat, ov = tmp_path / "h.tif", tmp_path / "h.png"
    assert main(["explain", str(model), str(img), "--method", method, "--out", str(heat), "--overlay", str(ov)]) == 0
    h = tifffile.imread(heat)
    assert h.dtype == np.float32 and h.shape == (40, 40) and 0 <= h.min() and h.max() <= 1
    rgb = np.asarray(Image.open(ov))
    assert rgb.shape == (40, 40, 3) and rgb.dtype == np.uint8
    assert "predicted" in capsys.readouterr().out


def test_explain_target_layer_and_all(model, phantoms, tmp_path, capsys):
    import tifffile

    img = str(phantoms / "covid" / "covid_0001.png")
    assert main(["explain", str(model), img, "--out", str(tmp_path / "a.tif"), "--target", "all",
                 "--overlay", str(tmp_path / "a.png")]) == 0
    assert tifffile.imread(tmp_path / "a.tif").shape == (3, 40, 40)
    # one overlay of all classes, at the path asked for, and stdout says what was written
    assert (tmp_path / "a.png").is_file() and not list(tmp_path.glob("a_*.png"))
    out = capsys.readouterr().out
    assert f"written to {tmp_path / 'a.tif'}" in out and f"written to {tmp_path / 'a.png'}" in out
    assert main(["explain", str(model), img, "--out", str(tmp_path / "b.tif"), "--layer", "features.block3",
                 "--target", "1"]) == 0
    assert "for normal" in capsys.readouterr().out
    _one_line_error(capsys, main(["explain", str(model), img, "--out", str(tmp_path / "c.tif"), "--layer", "nope"]),
                    "no layer")
    _one_line_error(capsys, main(["explain", str(model), img, "--out", str(tmp_path / "c.tif"), "--target", "cat"]),
                    "Unknown class")
    _one_line_error(capsys, main(["explain", str(model), str(tmp_path / "missing.png"), "--out", str(tmp_path / "c.tif")]),
                    "No image file")
    # --shifts reaches the engine: the map differs from the plain one, and a bad value is one sentence
    assert main(["explain", str(model), img, "--out", str(tmp_path / "s.tif"), "--shifts", "2"]) == 0
    assert main(["explain", str(model), img, "--out", str(tmp_path / "p.tif")]) == 0
    assert not np.array_equal(tifffile.imread(tmp_path / "s.tif"), tifffile.imread(tmp_path / "p.tif"))
    capsys.readouterr()
    _one_line_error(capsys, main(["explain", str(model), img, "--out", str(tmp_path / "c.tif"), "--shifts", "0"]),
                    "shifts must be")


def test_explain_methods_layers_and_smoothing(model, phantoms, tmp_path, capsys, monkeypatch):
    """Every registered method is a --method choice; --layer takes several names (fused) or the 'fine'
    preset; --smooth reaches the engine."""
    import tifffile

    from napari_gradcam.engine.methods import method_names

    img = str(phantoms / "pneumonia" / "pneumonia_0002.png")
    out = str(tmp_path / "h.tif")
    assert main(["explain", str(model), img, "--out", out, "--method", "layercam",
                 "--layer", "features.block2", "features.block3"]) == 0
    assert "layercam for" in capsys.readouterr().out
    fused = tifffile.imread(out)
    assert main(["explain", str(model), img, "--out", out, "--method", "layercam-fine"]) == 0
    assert "at layer features.block2.relu2+features.block3.relu2+features" in capsys.readouterr().out
    assert main(["explain", str(model), img, "--out", out, "--method", "layercam", "--layer", "fine"]) == 0
    assert "at layer features.block2.relu2+features.block3.relu2+features" in capsys.readouterr().out
    assert not np.array_equal(fused, tifffile.imread(out))
    assert main(["explain", str(model), img, "--out", out, "--smooth", "aug", "eigen"]) == 0
    assert tifffile.imread(out).shape == (40, 40)
    capsys.readouterr()
    _one_line_error(capsys, main(["explain", str(model), img, "--out", out, "--method", "cam", "--smooth", "eigen"]),
                    "no eigen smoothing")
    for name in method_names():
        assert main(["explain", str(model), img, "--out", out, "--method", name]) == 0, name
    # --precision reaches Score-CAM: float32 passes and forced bfloat16 screening agree within its tolerance
    from napari_gradcam.engine.methods.perturbation import scorecam as screen
    from napari_gradcam.engine.methods.perturbation.scorecam import TOLERANCE

    maps, screened, refine = [], [], screen.refine
    monkeypatch.setattr(screen, "refine", lambda *a, **k: screened.append(1) or refine(*a, **k))
    for precision in ("float32", "bfloat16"):
        assert main(["explain", str(model), img, "--out", out, "--method", "scorecam", "--precision", precision]) == 0
        maps.append(tifffile.imread(out))
        assert len(screened) == (precision == "bfloat16")
    np.testing.assert_allclose(maps[0], maps[1], atol=4 * TOLERANCE)
    capsys.readouterr()
    _one_line_error(capsys, main(["explain", str(model), img, "--out", out, "--precision", "fp8"]), "invalid choice")


def test_tile_large_image(model, tmp_path, capsys):
    import tifffile

    from napari_gradcam.phantoms import make_mosaic

    image, _ = make_mosaic((96, 128), tile=32, seed=1)
    src = tmp_path / "mosaic.tif"
    tifffile.imwrite(src, image)
    out = tmp_path / "tiles"
    assert main(["tile", str(model), str(src), "--tile", "32", "--overlap", "0.5", "--out", str(out), "-q"]) == 0
    info = json.loads((out / "breakdown.json").read_text())
    assert info["classes"] == ["covid", "normal", "pneumonia"]
    assert sum(info["breakdown"].values()) == pytest.approx(1.0)
    for c in info["classes"]:
        h = tifffile.imread(out / f"heatmap_{c}.tif")
        assert h.shape == (96, 128) and h.dtype == np.float32
    assert (out / "overlay.png").read_bytes()[:4] == b"\x89PNG"
    assert "breakdown" in capsys.readouterr().out
    _one_line_error(capsys, main(["tile", str(model), str(src), "--overlap", "2", "--out", str(out)]), "Overlap")


def test_every_command_has_a_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)


def test_localize_json_and_table(model, tmp_path, capsys):
    from napari_gradcam.phantoms import write_dataset

    images = write_dataset(tmp_path / "images", n_per_class=3, size=40, seed=9, mask_dir=tmp_path / "masks")
    out = tmp_path / "loc.json"
    code = main(["localize", str(model), str(images), str(tmp_path / "masks"), "--method", "cam", "gradcam",
                 "--json", str(out), "--device", "cpu", "-q"])
    assert code == 0
    table = capsys.readouterr().out
    assert "Grad-CAM" in table and "CAM" in table
    report = json.loads(out.read_text())
    assert report  # per-image rows and means were written
    assert main(["localize", str(model), str(images), str(tmp_path / "masks"), "--method", "gradcam",
                 "--shifts", "2", "--json", str(out), "-q"]) == 0
    assert json.loads(out.read_text())["settings"]["shifts"] == 2
    assert main(["localize", str(model), str(images), str(tmp_path / "nowhere"), "-q"]) == 2
    _one_line_error(capsys, 2)

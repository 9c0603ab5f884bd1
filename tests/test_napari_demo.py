"""The one-command demo: in process with a tiny model, and `napari-gradcam demo --screenshot` for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import torchvision  # noqa: E402,F401  - before any viewer: see _napari/_compat.py

CLASSES = ["normal", "pneumonia", "covid"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import torch

    from napari_gradcam import build_model, save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("demo") / "tiny.safetensors"
    save_model(build_model("simple_cnn", CLASSES, 1, 64), path)
    return path


def test_build_demo_in_process(make_napari_viewer, model_file):
    from napari_gradcam._napari.demo import build_demo, has_colour

    viewer = make_napari_viewer(show=True)
    widgets = build_demo(viewer, model_path=model_file, wait=True)
    names = [layer.name for layer in viewer.layers]
    assert names[:2] == ["xray_pneumonia", "xray_pneumonia_lesion"]
    assert len(names) == 3 and names[2].startswith("Grad-CAM ") and len(names[2]) <= 26
    pred = viewer.layers["xray_pneumonia"].metadata["gradcam_prediction"]
    assert pred["predicted"] == viewer.layers[2].metadata["target"]  # the overlay explains the prediction
    assert names[2].startswith(f"Grad-CAM {pred['predicted']} [xray")  # method and class before the image
    assert viewer.layers[2].metadata["source"] == "xray_pneumonia"
    assert widgets["model"].state.bundle is not None
    assert has_colour(viewer.screenshot(canvas_only=True, flash=False))
    # one panel, a tab per task, opened at Explain
    from napari_gradcam._napari.panel import GradCamPanel

    panel = widgets["explain"].parent()
    while not isinstance(panel, GradCamPanel):
        panel = panel.parent()
    assert [panel.tabs.tabText(i) for i in range(panel.tabs.count())][:8] == [
        "Model", "Classify", "Explain", "Compare", "Tiled", "Features", "Train", "Outline"]
    assert panel.tabs.currentWidget() is widgets["explain"]


def test_sample_demo_loads_the_demo_model(make_napari_viewer, qtbot):
    from napari_gradcam._napari.model_widget import demo_model_path

    if not demo_model_path().is_file():
        pytest.skip("the demo model is not built yet (scripts/make_demo_model.py)")
    viewer = make_napari_viewer()
    viewer.open_sample("napari-gradcam", "demo")
    assert "xray_pneumonia" in viewer.layers
    from napari_gradcam._napari.state import get_state

    state = get_state(viewer)
    qtbot.waitUntil(lambda: state.bundle is not None, timeout=30_000)
    assert state.source == "demo model"


def _demo_command() -> list[str]:
    exe = shutil.which("napari-gradcam") or str(Path(sys.executable).with_name("napari-gradcam"))
    if Path(exe).is_file():
        return [exe, "demo"]
    return [sys.executable, "-m", "napari_gradcam.cli", "demo"]


def test_demo_screenshot_command(tmp_path):
    from napari_gradcam._napari.model_widget import demo_model_path

    if not demo_model_path().is_file():
        pytest.skip("the demo model is not built yet (scripts/make_demo_model.py)")
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display: run the tests under xvfb-run -a")
    out = tmp_path / "demo.png"
    proc = subprocess.run([*_demo_command(), "--screenshot", str(out)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file()
    from skimage.io import imread

    img = imread(out)
    assert img.ndim == 3 and img.shape[0] > 400 and img.shape[1] > 600
    rgb = img[..., :3].astype(int)
    spread = rgb.max(-1) - rgb.min(-1)
    assert (spread > 40).sum() > 5000, "no coloured overlay in the demo screenshot"
    assert "no coloured overlay" not in proc.stderr

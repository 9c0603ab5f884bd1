"""The plugin as a newcomer meets it (#14), with real viewers: a layout that fits the screen, true
defaults, one job model (a model switched mid-run leaves the run alone), views that keep content in sight."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import torchvision  # noqa: E402,F401  - before any viewer: see _napari/_compat.py

from napari_gradcam._napari._base import camera_of  # noqa: E402
from napari_helpers import dock, load, wait  # noqa: E402

CLASSES = ["normal", "pneumonia", "covid"]


@pytest.fixture(scope="module")
def demo_file():
    from napari_gradcam.data import demo_model_path

    if not demo_model_path().is_file():
        pytest.skip("no demo model")
    return demo_model_path()


@pytest.fixture
def xray():
    from napari_gradcam.phantoms import make_xray

    return make_xray("pneumonia", size=128, seed=3)


@pytest.fixture
def notes():
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    yield notification_manager.records
    notification_manager.records.clear()


class Gate:
    """Holds a core function at its start until the test opens it; records the bundle it was called with."""

    def __init__(self, monkeypatch, module, name: str) -> None:
        self.entered, self.release, self.bundles = threading.Event(), threading.Event(), []
        real = getattr(module, name)

        def gated(bundle, *args, **kwargs):
            self.bundles.append(bundle)
            self.entered.set()
            if not self.release.wait(30):
                raise RuntimeError("the test never opened the gate")
            return real(bundle, *args, **kwargs)

        monkeypatch.setattr(module, name, gated)


# ----------------------------------------------------------------------------- layout at 1280 x 800
LAYOUT_SCRIPT = r"""
import json, time, torchvision, napari
from qtpy.QtWidgets import QApplication, QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit
from napari.layers import Layer
from napari_gradcam._napari.sample_data import sample_pneumonia

def settle(s=0.3):
    t0 = time.monotonic()
    while time.monotonic() - t0 < s:
        QApplication.processEvents(); time.sleep(0.01)

def wait(w):
    while w.busy:
        settle(0.05)

viewer = napari.Viewer()
window = viewer.window._qt_window
window.showMaximized()
panel = viewer.window.add_plugin_dock_widget("napari-gradcam", "napari-gradcam")[1]
settle(0.2)
widgets = panel.widgets
heights = [window.frameGeometry().height()]
for name in widgets:  # every tab shown once
    panel.show_tab(name); settle(0.2)
    heights.append(window.frameGeometry().height())
widgets["model"].load_demo(); wait(widgets["model"])
image = [viewer.add_layer(Layer.create(*t)) for t in sample_pneumonia()][0]
panel.show_tab("classify"); widgets["classify"].run(image); wait(widgets["classify"])
panel.show_tab("explain"); widgets["explain"].run(image, target="all"); wait(widgets["explain"])
panel.show_tab("features"); widgets["features"].run(image, n=4); wait(widgets["features"])
settle(0.5)
heights.append(window.frameGeometry().height())
kinds = (QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit)
short, checked = [], 0
for name, w in widgets.items():
    for c in w.body.findChildren(kinds):
        inner = isinstance(c.parent(), (QComboBox, QAbstractSpinBox))  # an editable box's own text field
        if c.isVisibleTo(w.body) and not inner:
            checked += 1
            if c.height() < c.sizeHint().height():
                short.append([name, type(c).__name__, c.height(), c.sizeHint().height()])
screen = QApplication.primaryScreen().availableGeometry()
print("RESULT " + json.dumps({"heights": heights, "screen": [screen.width(), screen.height()],
                              "short": short, "checked": checked}))
viewer.close()
"""


@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="needs Xvfb for a 1280 x 800 screen")
def test_all_widgets_docked_fit_a_1280x800_screen(demo_file, tmp_path):
    """The panel (every tab) docked on a 1,280 x 800 screen, as the Plugins menu docks it: the window stays
    within the screen while each tab is shown and after runs, and no form control is squeezed below its
    size hint.  (Docking many tabs as separate widgets stacks them: the panel is the way to see them all.)"""
    env = dict(os.environ)
    env.pop("DISPLAY", None)
    proc = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1280x800x24", sys.executable, "-c", LAYOUT_SCRIPT],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    result = json.loads(line[len("RESULT "):])
    assert result["screen"] == [1280, 800]
    assert max(result["heights"]) <= 800, result["heights"]
    assert result["checked"] > 40 and result["short"] == [], result["short"]


# ----------------------------------------------------------------------------- a model switched mid-run
def test_model_switched_mid_classify(make_napari_viewer, qtbot, model_file, other_model_file, xray, monkeypatch):
    import napari_gradcam.inference as inference

    viewer = make_napari_viewer()
    mw = load(qtbot, viewer, model_file)
    old, old_name = mw.state.bundle, mw.state.name
    cw = dock(viewer, "Classify")
    src = viewer.add_image(xray.image, name="xray")
    gate = Gate(monkeypatch, inference, "predict")
    assert cw.run(src) is not None
    qtbot.waitUntil(gate.entered.is_set, timeout=30_000)
    mw.load_file(other_model_file)
    wait(qtbot, mw)
    assert mw.state.bundle.classes == ["cat", "dog"]
    gate.release.set()
    wait(qtbot, cw)
    assert cw.last_error is None and gate.bundles == [old]
    pred = src.metadata["gradcam_prediction"]
    # the old model's probabilities under the old model's class names, labelled with it
    assert pred["classes"] == CLASSES and len(pred["probabilities"]) == 3 and pred["model"] == old_name
    assert "tiny" in old_name and cw.table.rowCount() == 3
    assert {cw.table.item(r, 0).text() for r in range(3)} == set(CLASSES)
    assert old_name in cw.result_label.text()


def test_model_switched_mid_comparison(make_napari_viewer, qtbot, model_file, other_model_file, xray, monkeypatch):
    """Heatmap vs outline with deletion/insertion curves: the curves are the old model's."""
    import napari_gradcam.localisation as loc

    viewer = make_napari_viewer()
    mw = load(qtbot, viewer, model_file)
    old, old_name = mw.state.bundle, mw.state.name
    ew = dock(viewer, "Explain (Grad-CAM)")
    src = viewer.add_image(xray.image, name="xray")
    lesion = viewer.add_labels(xray.mask.astype(np.uint8), name="lesion")
    ew.run(src, target="pneumonia")
    wait(qtbot, ew)
    lw = dock(viewer, "Heatmap vs outline")
    heat = lw.heatmap.value
    assert heat is ew.layers_added[0]
    real = loc.deletion_insertion
    gate = Gate(monkeypatch, loc, "deletion_insertion")
    assert lw.run(outline=lesion, curves=True) is not None
    qtbot.waitUntil(gate.entered.is_set, timeout=30_000)
    mw.load_file(other_model_file)
    wait(qtbot, mw)
    gate.release.set()
    wait(qtbot, lw)
    assert lw.last_error is None and gate.bundles == [old]
    from napari_gradcam import explain

    want = real(old, xray.image, explain(old, xray.image, "gradcam", target="pneumonia").data, "pneumonia")
    np.testing.assert_allclose([lw.result["deletion_auc"], lw.result["insertion_auc"]],
                               [want["deletion_auc"], want["insertion_auc"]], atol=1e-4)
    assert old_name in lw.result_label.text()


def test_model_switched_while_training(make_napari_viewer, qtbot, model_file, tmp_path):
    """Training makes its own model: loading another one meanwhile changes nothing; at the end the trained
    model is the viewer's, labelled with the file it was saved to."""
    from napari_gradcam.phantoms import write_dataset

    data = write_dataset(tmp_path / "data", 8, size=32, seed=0)
    viewer = make_napari_viewer()
    tw = dock(viewer, "Train")
    out = tmp_path / "trained.safetensors"
    assert tw.run(data_dir=data, output=out, image_size=32, epochs=100, batch_size=4, device="cpu") is not None
    qtbot.waitUntil(lambda: any(e.kind == "batch" for e in tw.events), timeout=60_000)
    mw = load(qtbot, viewer, model_file)
    assert mw.state.source == str(model_file) and tw.busy  # switched while training
    qtbot.waitUntil(lambda: any(e.kind == "epoch" for e in tw.events), timeout=60_000)
    tw.cancel()
    wait(qtbot, tw, timeout=120_000)
    assert tw.last_error is None and tw.result.stopped and tw.result.bundle is not None
    assert tw.state.bundle is tw.result.bundle and tw.state.source == str(out)
    assert set(tw.state.bundle.classes) == set(CLASSES)


def test_refused_second_train_click_leaves_the_run_alone(make_napari_viewer, qtbot, tmp_path, notes):
    """A second Train while training: refused with a notification; the live curves and a pending Cancel stay."""
    from napari_gradcam.phantoms import write_dataset

    data = write_dataset(tmp_path / "data", 8, size=32, seed=0)
    viewer = make_napari_viewer()
    tw = dock(viewer, "Train")
    worker = tw.run(data_dir=data, output=tmp_path / "m.safetensors", image_size=32, epochs=300, batch_size=4,
                    device="cpu")
    qtbot.waitUntil(lambda: len([e for e in tw.events if e.kind == "batch"]) >= 2, timeout=60_000)
    tw.cancel()
    batches = list(tw.curves.batch_loss)
    events = len(tw.events)
    assert tw.run(data_dir=data, epochs=1) is None  # refused
    assert tw.worker is worker and tw.epochs.value == 300  # the form was left alone
    assert tw.curves.batch_loss[: len(batches)] == batches and len(tw.events) >= events
    assert any("still running" in n.message for n in notes)
    wait(qtbot, tw, timeout=60_000)
    assert tw.result.stopped and tw.result.epochs_done < 300  # the pending cancel was kept


# ----------------------------------------------------------------------------- defaults
def test_outline_widget_picks_the_newest_heatmap(make_napari_viewer, qtbot, model_file, xray):
    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    src = viewer.add_image(xray.image, name="xray")
    viewer.add_labels(xray.mask.astype(np.uint8), name="lesion")
    ew.run(src, method="cam", target="covid", keep=True)
    wait(qtbot, ew)
    ew.run(src, method="gradcam", target="all", keep=True)
    wait(qtbot, ew)
    assert viewer.layers.selection.active is src  # the source X-ray is the active layer
    lw = dock(viewer, "Heatmap vs outline")  # docked after Explain ran
    newest = [layer for layer in ew.layers_added]
    best = max(newest, key=lambda layer: layer.metadata["score"])
    assert lw.heatmap.value is best  # the newest run's most probable class, not the X-ray
    # a widget docked before: the next run's best map becomes its choice
    ew.run(src, method="gradcam++", target="pneumonia", keep=True)
    wait(qtbot, ew)
    assert lw.heatmap.value is ew.layers_added[0]


def test_all_classes_share_a_scale(make_napari_viewer, qtbot, demo_file):
    """The demo model on a pneumonia X-ray: normal and covid (p ~ 0) stay dark by default; each class in its
    own colour, the CLI's colour."""
    from napari.utils.colormaps import ensure_colormap

    from napari_gradcam.colours import class_colour
    from napari_gradcam.phantoms import make_xray

    viewer = make_napari_viewer()
    load(qtbot, viewer, demo_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    src = viewer.add_image(make_xray("pneumonia", size=256, seed=7).image, name="xray")
    assert ew.run(src, target="all") is not None and ew.scale.value == "probability"
    assert not ew.scale.native.isHidden()  # the scale shows with "all classes"
    wait(qtbot, ew)
    heats = {layer.metadata["target"]: layer for layer in ew.layers_added}
    assert heats["pneumonia"].data.max() > 0.9
    assert heats["normal"].data.max() < 1e-3 and heats["covid"].data.max() < 1e-3
    for layer in heats.values():
        bright = ensure_colormap(layer.colormap).map(np.array([1.0]))[0][:3]
        np.testing.assert_allclose(bright, class_colour(layer.metadata["target_index"]), atol=1e-6)
        assert layer.metadata["scale"] == "probability"
    ew.run(src, target="all", scale="each")
    wait(qtbot, ew)
    assert min(layer.data.max() for layer in ew.layers_added) > 0.9  # each to its own maximum


def test_comparison_on_a_coarse_heatmap_uses_the_image_grid(make_napari_viewer, qtbot, model_file, xray):
    """A coarse Explain heatmap is compared on its image's pixel grid, upsampled as napari shows it: the
    metrics equal those of the engine's full-size map."""
    from napari_gradcam import explain, load_model
    from napari_gradcam.localisation import localisation_scores

    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    src = viewer.add_image(xray.image, name="xray", scale=(2.0, 2.0), translate=(4.0, 6.0))
    lesion = viewer.add_labels(xray.mask.astype(np.uint8), name="lesion", scale=(2.0, 2.0), translate=(4.0, 6.0))
    ew.run(src, target="pneumonia")
    wait(qtbot, ew)
    lw = dock(viewer, "Heatmap vs outline")
    assert lw.heatmap.value.metadata["coarse"]
    lw.run(outline=lesion, tolerance=4, level=0.5)
    wait(qtbot, lw)
    full = explain(load_model(model_file), xray.image, "gradcam", target="pneumonia").data
    want = localisation_scores(full, xray.mask, tolerance=4, level=0.5)
    for key in ("energy", "iou_otsu", "dice_fixed", "pointing"):
        np.testing.assert_allclose(lw.result[key], want[key], atol=1e-4, err_msg=key)


# ----------------------------------------------------------------------------- views and tables
def _content_box(shot: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the non-black pixels of a canvas screenshot."""
    ys, xs = np.nonzero(shot[..., :3].max(-1) > 30)
    return ys.min(), ys.max(), xs.min(), xs.max()


def test_side_by_side_shows_everything_and_gives_the_view_back(make_napari_viewer, qtbot, model_file, xray):
    viewer = make_napari_viewer(show=True)
    load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    src = viewer.add_image(xray.image, name="xray")
    ew.run(src, target="all")
    wait(qtbot, ew)
    camera = camera_of(viewer)
    camera.zoom, camera.center = 8.0, (0.0, 20.0, 30.0)  # zoomed into a corner
    before = (camera.zoom, tuple(camera.center))
    ew.side_by_side(True)
    qtbot.wait(100)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    top, bottom, left, right = _content_box(shot)
    h, w = shot.shape[:2]
    assert top > 0 and left > 0 and bottom < h - 1 and right < w - 1  # every panel whole, in view
    assert right - left > 2 * (bottom - top)  # the panels side by side
    ew.side_by_side(False)
    assert not ew.grid.enabled and (camera.zoom, tuple(camera.center)) == before


def test_feature_grid_in_view_and_back(make_napari_viewer, qtbot, model_file, xray):
    viewer = make_napari_viewer(show=True)
    load(qtbot, viewer, model_file)
    fw = dock(viewer, "Feature maps")
    src = viewer.add_image(xray.image, name="xray")
    camera = camera_of(viewer)
    camera.zoom, camera.center = 6.0, (0.0, 10.0, 10.0)
    before = (camera.zoom, tuple(camera.center))
    fw.run(src, n=9, display="grid")
    wait(qtbot, fw)
    qtbot.wait(100)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    top, bottom, left, right = _content_box(shot)
    h, w = shot.shape[:2]
    assert top > 0 and left > 0 and bottom < h - 1 and right < w - 1  # image and grid, whole
    fw.run(src, display="stack")
    wait(qtbot, fw)
    assert (camera.zoom, tuple(camera.center)) == before


def test_tables_and_plots_read_well(make_napari_viewer, qtbot, model_file):
    from napari.utils.theme import get_theme

    from napari_gradcam.phantoms import make_batch

    viewer = make_napari_viewer(show=True)
    load(qtbot, viewer, model_file)
    cw = dock(viewer, "Classify")
    header = cw.table.horizontalHeader()
    assert [cw.table.horizontalHeaderItem(i).text() for i in range(cw.table.columnCount())] == ["class", "probability"]
    stack = viewer.add_image(make_batch(2, size=64)[0], name="stack")
    cw.run(stack, every_slice=True)
    wait(qtbot, cw)
    t = cw.table
    assert t.horizontalHeaderItem(1).text() == "predicted"
    assert header.sectionViewportPosition(1) + t.columnWidth(1) <= t.viewport().width()  # in view
    assert t.item(0, 1).text() in CLASSES
    tw = dock(viewer, "Train")
    bg = tw.curves.fig.get_facecolor()
    want = get_theme(viewer.theme).background.as_rgb_tuple()
    np.testing.assert_allclose(np.array(bg[:3]) * 255, want[:3], atol=1)
    viewer.theme = "light" if viewer.theme == "dark" else "dark"
    want = get_theme(viewer.theme).background.as_rgb_tuple()
    np.testing.assert_allclose(np.array(tw.curves.fig.get_facecolor()[:3]) * 255, want[:3], atol=1)

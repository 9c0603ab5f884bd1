"""The napari widgets with real viewers (run under ``xvfb-run -a``)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

# torchvision imports triton, whose LLVM crashes next to Mesa's software OpenGL (xvfb) once a
# viewer exists: import it now, at collection, before any viewer (see _napari/_compat.py).
import torchvision  # noqa: E402,F401

CLASSES = ["normal", "pneumonia", "covid"]
from napari_helpers import PLUGIN, wait, dock, load
SCALE, TRANSLATE = (2.0, 2.0), (10.0, 5.0)


# ----------------------------------------------------------------------------- helpers / fixtures
@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained simple_cnn (3 classes, 64 px) saved as a bundle."""
    import torch

    from napari_gradcam import build_model, save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(build_model("simple_cnn", CLASSES, 1, 64), path)
    return path


@pytest.fixture
def xray():
    from napari_gradcam.phantoms import make_xray

    return make_xray("pneumonia", size=128, seed=3).image





def errors():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [n.message for n in notification_manager.records if n.severity == NotificationSeverity.ERROR]


@pytest.fixture
def clean_notifications():
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    yield
    notification_manager.records.clear()


# ----------------------------------------------------------------------------- manifest / sample data
def test_widgets_added_by_name(make_napari_viewer):
    from napari_gradcam._napari.classify_widget import ClassifyWidget
    from napari_gradcam._napari.explain_widget import ExplainWidget
    from napari_gradcam._napari.features_widget import FeatureMapsWidget
    from napari_gradcam._napari.model_widget import ModelWidget
    from napari_gradcam._napari.tiled_widget import TiledHeatmapsWidget
    from napari_gradcam._napari.train_widget import TrainWidget

    viewer = make_napari_viewer()
    expected = {"Model": ModelWidget, "Classify": ClassifyWidget, "Explain (Grad-CAM)": ExplainWidget,
                "Tiled heatmaps": TiledHeatmapsWidget, "Feature maps": FeatureMapsWidget, "Train": TrainWidget}
    widgets = {name: dock(viewer, name) for name in expected}
    for name, cls in expected.items():
        assert isinstance(widgets[name], cls)
    # one shared model per viewer
    assert len({id(w.state) for w in widgets.values()}) == 1


def test_manifest_menus():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution(PLUGIN)
    menus = pm.contributions.menus
    assert {"napari/layers/classify", "napari/layers/visualize"} <= set(menus)
    names = {w.display_name for w in pm.contributions.widgets}
    assert {"Model", "Classify", "Explain (Grad-CAM)", "Tiled heatmaps", "Feature maps", "Train"} <= names
    keys = {s.key for s in pm.contributions.sample_data}
    assert {"xray_normal", "xray_pneumonia", "xray_covid", "xray_mosaic", "demo"} <= keys


def test_sample_data_by_name(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "xray_pneumonia")
    assert [layer.name for layer in viewer.layers] == ["xray_pneumonia", "xray_pneumonia_lesion"]
    assert viewer.layers["xray_pneumonia_lesion"].__class__.__name__ == "Labels"
    assert viewer.layers["xray_pneumonia_lesion"].data.any()
    viewer.open_sample(PLUGIN, "xray_normal")
    assert "xray_normal" in viewer.layers and "xray_normal_lesion" not in viewer.layers


# ----------------------------------------------------------------------------- model widget
def test_model_widget_load_build_and_share(make_napari_viewer, qtbot, model_file, tmp_path, clean_notifications):
    viewer = make_napari_viewer()
    mw = load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    text = mw.info.text()
    assert "simple_cnn" in text and "pneumonia" in text and "64 x 64" in text
    assert mw.target_layer.value == "features" and "features.block3" in mw.target_layer.choices
    # the explain widget follows the shared model and its target layer
    assert set(CLASSES) < set(ew.target.choices) and ew.layer.value == "features"
    mw.target_layer.value = "features.block3"
    assert mw.state.target_layer == "features.block3" and ew.layer.value == "features.block3"

    mw.build("simple_cnn", ["cat", "dog"], in_channels=3, input_size=32)
    wait(qtbot, mw)
    assert mw.state.bundle.classes == ["cat", "dog"] and mw.state.bundle.in_channels == 3
    assert {"cat", "dog"} < set(ew.target.choices) and "covid" not in ew.target.choices
    assert "untrained" in mw.info.text()

    # a device that is not there: a notification, and the choice goes back
    import torch

    if not torch.cuda.is_available():
        mw.device.value = "cuda"
        assert mw.device.value == "auto" and "CUDA" in errors()[-1]
        assert mw.state.bundle.device.type == "cpu"

    # a broken file: a notification with one sentence, the previous model stays
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a model at all")
    mw.load_file(bad)
    wait(qtbot, mw)
    assert mw.state.bundle.classes == ["cat", "dog"]
    assert any("broken.safetensors" in m for m in errors())


# ----------------------------------------------------------------------------- classify
def test_classify_current_slice_and_stack(make_napari_viewer, qtbot, model_file, xray):
    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    cw = dock(viewer, "Classify")
    layer = viewer.add_image(xray, name="xray")
    cw.run(layer)
    wait(qtbot, cw)
    pred = layer.metadata["gradcam_prediction"]
    assert pred["classes"] == CLASSES
    assert np.isclose(sum(pred["probabilities"]), 1, atol=1e-4)
    assert pred["predicted"] == CLASSES[int(np.argmax(pred["probabilities"]))]
    assert cw.table.rowCount() == 3
    assert cw.table.item(0, 0).text() == pred["predicted"] and cw.table.item(0, 0).font().bold()

    from napari_gradcam.phantoms import make_batch

    images, _, _ = make_batch(2, size=64)  # 6 slices
    stack = viewer.add_image(images, name="stack")
    viewer.dims.set_current_step(0, 4)
    cw.run(stack, every_slice=False)
    wait(qtbot, cw)
    assert stack.metadata["gradcam_prediction"]["slice"] == [4]
    cw.run(stack, every_slice=True)
    wait(qtbot, cw)
    pred = stack.metadata["gradcam_prediction"]
    assert np.asarray(pred["probabilities"]).shape == (6, 3) and len(pred["predicted"]) == 6
    assert cw.table.rowCount() == 6 and cw.table.columnCount() == 5


# ----------------------------------------------------------------------------- explain
def test_explain_layer_properties_and_replacement(make_napari_viewer, qtbot, model_file, xray):
    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    src = viewer.add_image(xray, name="xray_pneumonia", scale=SCALE, translate=TRANSLATE)
    ew.run(src, method="gradcam", target="pneumonia")
    wait(qtbot, ew)
    assert ew.last_error is None
    heat = viewer.layers[-1]
    # the class first and the image last: both stay visible when napari shortens the name in the middle
    assert heat.name == "Grad-CAM pneumonia [xra…]" and heat.metadata["source"] == "xray_pneumonia"
    assert heat.colormap.name == "inferno"
    assert str(heat.blending) == "additive"
    assert heat.opacity == pytest.approx(0.5)
    assert tuple(heat.contrast_limits) == (0.0, 1.0)
    # coarse: one value per feature-map cell, placed over the image's pixels and shown with linear
    # interpolation; upsampled as napari shows it, it is the engine's full-size map
    assert heat.data.shape == (8, 8) and heat.data.dtype == np.float32 and heat.metadata["coarse"]
    cell = np.array(xray.shape) / 8
    np.testing.assert_allclose(heat.scale, np.array(SCALE) * cell)
    np.testing.assert_allclose(heat.translate, np.array(TRANSLATE) + np.array(SCALE) * (cell - 1) / 2)
    assert str(heat.interpolation2d) == "linear"
    assert 0 <= heat.data.min() and heat.data.max() <= 1
    import torch

    from napari_gradcam import explain, load_model
    from napari_gradcam.preprocess import resize_maps

    full = explain(load_model(model_file), xray, "gradcam", target="pneumonia").data
    shown = resize_maps(torch.from_numpy(heat.data), xray.shape).numpy()
    np.testing.assert_allclose(shown, full, atol=1e-5)
    meta = heat.metadata
    assert meta["method"] == "gradcam" and meta["layer"] == "features" and meta["target"] == "pneumonia"
    assert meta["source"] == "xray_pneumonia" and 0 <= meta["score"] <= 1
    assert viewer.layers.selection.active is src  # the source stays selected for the next run

    # re-running replaces its own layer; "keep" adds
    ew.run(src, method="gradcam++")
    wait(qtbot, ew)
    assert len(viewer.layers) == 2 and "Grad-CAM++ " in viewer.layers[-1].name and viewer.layers[-1].name.startswith("Grad-CAM++ ")
    ew.run(src, method="cam", keep=True)
    wait(qtbot, ew)
    assert len(viewer.layers) == 3 and viewer.layers[-1].name.startswith("CAM ")
    # sub-cell shifts: the layer holds the core's shift-averaged map
    ew.run(src, method="gradcam", target="pneumonia", keep=False, shifts=3)
    wait(qtbot, ew)
    fine = viewer.layers[-1]
    assert fine.metadata["shifts"] == 3 and ew.shifts.value == 3
    want = explain(load_model(model_file), xray, "gradcam", target="pneumonia", shifts=3).data
    np.testing.assert_allclose(fine.data, want, atol=1e-6)
    ew.shifts.value = 1
    # all classes at once: one layer per class, each with its own colormap; replaces the previous ones
    ew.run(src, method="gradcam", target="all", keep=False)
    wait(qtbot, ew)
    heats = [layer for layer in viewer.layers if layer.metadata.get("widget") == "explain"]
    assert [h.metadata["target"] for h in heats] == CLASSES
    assert len({h.colormap.name for h in heats}) == 3

    # side by side: napari's grid mode
    ew.side_by_side(True)
    assert ew.grid.enabled and ew.side_button.isChecked()
    ew.side_by_side(False)
    assert not ew.grid.enabled and not ew.side_button.isChecked()


def test_explain_overlay_visible_in_screenshot(make_napari_viewer, qtbot, model_file, xray):
    viewer = make_napari_viewer(show=True)
    load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    # a dim display of the image, so that the additive overlay cannot saturate to white
    src = viewer.add_image(xray, name="xray", contrast_limits=(0, 4 * 255))
    ew.run(src)
    wait(qtbot, ew)
    layer = viewer.layers[-1]
    heat = layer.data  # coarse: one value per feature-map cell, placed over the image (see points below)
    viewer.reset_view()
    layer.visible = False
    qtbot.wait(50)
    before = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    assert (before.max(-1) - before.min(-1)).max() < 10  # gray only
    layer.visible = True
    qtbot.wait(50)
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    assert shot.shape == before.shape
    spread = shot.max(-1) - shot.min(-1)
    assert (spread > 40).sum() > 0.02 * spread.size, "no coloured overlay in the screenshot"

    # the overlay adds most where the heatmap is high: image pixel -> canvas pixel
    added = (shot - before).sum(-1)
    cam = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    h, w = added.shape

    def canvas_value(r, c):
        y = int(round((r - cam.center[-2]) * cam.zoom + h / 2))
        x = int(round((c - cam.center[-1]) * cam.zoom + w / 2))
        if not (1 <= y < h - 1 and 1 <= x < w - 1):
            return None
        return added[y - 1: y + 2, x - 1: x + 2].mean()

    def mean_over(points):
        vals = [canvas_value(*p) for p in points[:: max(1, len(points) // 40)]]
        vals = [v for v in vals if v is not None]
        assert vals
        return float(np.mean(vals))

    def image_points(cells):  # cell centres -> image pixels (the layer's scale and translate)
        return cells * np.asarray(layer.scale) + np.asarray(layer.translate)

    hot = mean_over(image_points(np.argwhere(heat >= np.quantile(heat, 0.97))))
    cold = mean_over(image_points(np.argwhere(heat <= np.quantile(heat, 0.05))))
    assert hot > 80 and hot > 2 * cold, (hot, cold)


def test_explain_stack_slice_rgb_and_multiscale(make_napari_viewer, qtbot, model_file):
    from napari_gradcam._napari.layers import layer_plane
    from napari_gradcam.phantoms import make_batch

    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    images, _, _ = make_batch(1, size=64)  # (3, 64, 64)
    stack = viewer.add_image(images, name="stack", scale=(5.0, *SCALE), translate=(1.0, *TRANSLATE))
    viewer.dims.set_current_step(0, 2)
    ew.run(stack)
    wait(qtbot, ew)
    heat = viewer.layers[-1]
    # a (1, h, w) layer sitting at slice 2 only, its 8 x 8 cells over the 64 x 64 image
    assert heat.data.shape == (1, 8, 8) and heat.metadata["slice"] == [2]
    np.testing.assert_allclose(heat.scale, (5.0, *(np.array(SCALE) * 8)))
    np.testing.assert_allclose(heat.translate, (1.0 + 2 * 5.0, *(np.array(TRANSLATE) + np.array(SCALE) * 3.5)))
    assert heat.name.endswith("[2]]") and heat.metadata["source"] == "stack"  # the slice stays in the name

    rgb = viewer.add_image(np.dstack([images[0]] * 3), name="rgb", rgb=True)
    ew.run(rgb)
    wait(qtbot, ew)
    assert ew.last_error is None and viewer.layers[-1].data.shape == (8, 8)
    np.testing.assert_allclose(viewer.layers[-1].data.shape * viewer.layers[-1].scale, (64, 64))

    # multiscale: a coarse level when the finest is too large; geometry follows the level
    base = np.zeros((256, 256), np.uint8)
    ms = viewer.add_image([base, base[::2, ::2]], multiscale=True, name="ms", scale=SCALE, translate=TRANSLATE)
    plane = layer_plane(viewer, ms, max_pixels=128 * 128)
    assert plane.level == 1 and plane.data.shape == (128, 128)
    np.testing.assert_allclose(plane.scale, np.array(SCALE) * 2)
    np.testing.assert_allclose(plane.translate, np.array(TRANSLATE) + np.array(SCALE) * 0.5)
    ew.run(ms)
    wait(qtbot, ew)
    assert ew.last_error is None and viewer.layers[-1].metadata["image_shape"] == [256, 256]
    # the coarse map covers the whole multiscale image in the world
    np.testing.assert_allclose(np.array(viewer.layers[-1].data.shape) * viewer.layers[-1].scale,
                               np.array((256, 256)) * SCALE)


def test_errors_become_notifications(make_napari_viewer, qtbot, model_file, clean_notifications):
    viewer = make_napari_viewer()
    cw = dock(viewer, "Classify")
    ew = dock(viewer, "Explain (Grad-CAM)")
    tw = dock(viewer, "Tiled heatmaps")
    fw = dock(viewer, "Feature maps")
    # no model
    for w in (cw, ew, tw, fw):
        assert w.run() is None
    assert len(errors()) == 4 and all("No model is loaded" in m for m in errors())
    load(qtbot, viewer, model_file)
    # no image layer
    assert ew.run() is None and "no image layer" in errors()[-1].lower()
    # wrong layer type
    labels = viewer.add_labels(np.zeros((32, 32), np.uint8), name="mask")
    assert cw.run(labels) is None and "labels layer, not an image layer" in errors()[-1]
    # an error in the worker (an image without finite values): a sentence, no traceback
    nan = viewer.add_image(np.full((32, 32), np.nan, np.float32), name="nan")
    ew.run(nan)
    wait(qtbot, ew)
    assert "no finite values" in errors()[-1] and "Traceback" not in errors()[-1]
    assert not any(layer.metadata.get("widget") == "explain" for layer in viewer.layers)


# ----------------------------------------------------------------------------- tiled heatmaps
def test_tiled_widget_layers_breakdown_and_cancel(make_napari_viewer, qtbot, model_file, clean_notifications):
    from napari_gradcam.phantoms import make_mosaic

    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    tw = dock(viewer, "Tiled heatmaps")
    image, _ = make_mosaic((192, 256), tile=128)
    src = viewer.add_image(image, name="mosaic", scale=SCALE, translate=TRANSLATE)
    tw.run(src, tile=64, overlap=0.5, classes="all", method="cam")
    wait(qtbot, tw)
    assert tw.last_error is None
    layers = [layer for layer in viewer.layers if layer.metadata.get("widget") == "tiled"]
    assert [layer.metadata["target"] for layer in layers] == CLASSES
    assert len({layer.colormap.name for layer in layers}) == 3
    for layer in layers:
        assert layer.data.shape == image.shape and layer.visible and str(layer.blending) == "additive"
        np.testing.assert_allclose(layer.scale, SCALE)
        np.testing.assert_allclose(layer.translate, TRANSLATE)
    assert sum(layer.metadata["share"] for layer in layers) == pytest.approx(1.0)
    assert tw.table.rowCount() == 3 and tw.progress_bar.value() == tw.progress_bar.maximum()

    # top-k replaces the previous maps
    tw.run(src, classes=2)
    wait(qtbot, tw)
    assert len([layer for layer in viewer.layers if layer.metadata.get("widget") == "tiled"]) == 2

    # cancel: stops between batches, adds nothing, says so
    tw.run(src, tile=16, overlap=0.9, classes="all", keep=True)
    tw.cancel()
    wait(qtbot, tw)
    from napari.utils.notifications import notification_manager

    assert any("cancelled" in n.message for n in notification_manager.records)
    assert len([layer for layer in viewer.layers if layer.metadata.get("widget") == "tiled"]) == 2
    # the model lock was released: the next job runs
    tw.run(src, tile=64, overlap=0.0, classes=["covid"], keep=False)
    wait(qtbot, tw)
    assert [layer.metadata["target"] for layer in viewer.layers if layer.metadata.get("widget") == "tiled"] == ["covid"]


def test_tiled_widget_asks_before_a_plan_over_the_time_budget(make_napari_viewer, qtbot, model_file,
                                                               clean_notifications, monkeypatch):
    """A plan the engine estimates beyond its time budget is put to the user: no runs nothing and says why
    (no error notification); yes runs it with force=True and adds the maps."""
    import napari_gradcam.engine.tiling.budget as budget
    from napari_gradcam.phantoms import make_mosaic

    monkeypatch.setattr(budget, "TIME_BUDGET_MINUTES", 1e-9)  # every timed plan (> 64 tiles) is over it
    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    tw = dock(viewer, "Tiled heatmaps")
    src = viewer.add_image(make_mosaic((640, 640), tile=128)[0], name="mosaic")
    tiled = lambda: [layer for layer in viewer.layers if layer.metadata.get("widget") == "tiled"]  # noqa: E731
    asked = []
    tw.ask = lambda question: asked.append(question) or False
    tw.run(src, tile=32, overlap=0.0, classes="all", method="cam")  # 400 tiles
    wait(qtbot, tw)
    assert len(asked) == 1 and "anyway?" in asked[0] and "400 tiles" in asked[0], asked
    assert tw.last_error.startswith("Not computed") and not tiled() and not errors()
    tw.ask = lambda question: asked.append(question) or True
    tw.run(src, tile=32, overlap=0.0, classes="all", method="cam")
    qtbot.waitUntil(lambda: len(tiled()) == 3, timeout=120_000)
    wait(qtbot, tw)
    assert len(asked) == 2 and tw.last_error is None and not errors()


def test_tiled_widget_dask_and_multiscale(make_napari_viewer, qtbot, model_file):
    import dask.array as da

    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    tw = dock(viewer, "Tiled heatmaps")
    rng = np.random.default_rng(0)
    big = da.from_array(rng.integers(0, 255, (2100, 2100), dtype=np.uint8), chunks=1024)
    src = viewer.add_image(big, name="big", multiscale=False)
    tw.run(src, tile=256, overlap=0.0, classes=["normal", "covid"])
    wait(qtbot, tw, timeout=120_000)
    assert tw.last_error is None
    layers = [layer for layer in viewer.layers if layer.metadata.get("widget") == "tiled"]
    # coarse: the engine's blending grid (4 px for 256 px tiles), covering the whole image
    assert len(layers) == 2 and layers[0].data.shape == (525, 525) and layers[0].metadata["grid_step"] == 4
    np.testing.assert_allclose(np.array(layers[0].data.shape) * layers[0].scale, (2100, 2100))

    base = rng.integers(0, 255, (512, 512), dtype=np.uint8)
    ms = viewer.add_image([base, base[::2, ::2]], name="pyramid", multiscale=True)
    tw.run(ms, tile=128, overlap=0.0, classes="all")
    wait(qtbot, tw)
    assert tw.last_error is None
    layers = [layer for layer in viewer.layers if layer.metadata.get("source") == "pyramid"]
    assert len(layers) == 3 and layers[0].data.shape == (256, 256)  # a 2 px grid for 128 px tiles
    np.testing.assert_allclose(np.array(layers[0].data.shape) * layers[0].scale, (512, 512))


# ----------------------------------------------------------------------------- feature maps
def test_feature_maps_stack_and_grid(make_napari_viewer, qtbot, model_file, xray):
    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    fw = dock(viewer, "Feature maps")
    src = viewer.add_image(xray, name="xray", scale=SCALE, translate=TRANSLATE)
    fw.run(src, model_layer="features.block2", n=9, display="stack")
    wait(qtbot, fw)
    assert fw.last_error is None
    layer = viewer.layers[-1]
    assert layer.data.shape == (9, 16, 16)  # 128 px image -> 64 px input -> block2 (two poolings) at 1/4
    assert layer.metadata["layer"] == "features.block2" and len(layer.metadata["channels"]) == 9
    # the maps cover the image: 8 x 8 image pixels per map pixel, centred on them
    np.testing.assert_allclose(layer.scale[-2:], np.array(SCALE) * 8)
    np.testing.assert_allclose(layer.translate[-2:], np.array(TRANSLATE) + np.array(SCALE) * 3.5)
    fw.run(src, display="grid")
    wait(qtbot, fw)
    assert [lyr.name for lyr in viewer.layers][-1].endswith("grid") and viewer.layers[-1].ndim == 2
    assert len(viewer.layers) == 2  # replaced


SCRIPT_TORCHVISION_AFTER_VIEWER = """
import time, napari
from qtpy.QtWidgets import QApplication
viewer = napari.Viewer()
viewer.screenshot(flash=False)  # the OpenGL context exists (Mesa's LLVM under xvfb)
_, mw = viewer.window.add_plugin_dock_widget("napari-gradcam", "Model")
mw.build("resnet18", ["a", "b"], input_size=32)  # imports torchvision in the worker
t0 = time.time()
while mw.busy and time.time() - t0 < 120:
    QApplication.processEvents(); time.sleep(0.02)
print("BUILT", mw.state.bundle.architecture if mw.state.bundle else mw.last_error)
viewer.close()
"""


def test_torchvision_model_after_the_viewer_opened():
    """torchvision -> triton after napari's OpenGL context used to crash the process (see _compat)."""
    import os
    import subprocess
    import sys

    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display: run the tests under xvfb-run -a")
    proc = subprocess.run([sys.executable, "-c", SCRIPT_TORCHVISION_AFTER_VIEWER], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "BUILT resnet18" in proc.stdout

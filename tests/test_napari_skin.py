"""The napari skin a newcomer can trust (issue 20, points 1-4), with real viewers (run under ``xvfb-run -a``).

1. every widget computes on the image one is looking at, and an outline is matched to its heatmap's image;
2. one panel, a tab per task, that fits a 1280 x 800 window with every run button in view;
3. signed maps visible over any part of the image, controls that do not apply disabled;
4. napari's words (fields, not command-line flags), mean/std in the Model tab, the training recipe's
   defaults, and DICOM layers in millimetres explained without a units clash.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import torchvision  # noqa: E402,F401  - before any viewer: see _napari/_compat.py

from napari_helpers import PLUGIN, dock, load, wait, save_tiny_model  # noqa: E402

CLASSES = ["normal", "pneumonia", "covid"]
IMAGE_TABS = ("classify", "explain", "compare", "tiled", "features")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained simple_cnn (3 classes, 32 px) saved as a bundle."""
    return save_tiny_model(tmp_path_factory, CLASSES, 32)


@pytest.fixture(scope="module")
def mosaic_once():
    """The mosaic sample's 3072 px arrays, made once for the module (the sample itself is unchanged)."""
    from napari_gradcam._napari import sample_data

    made = sample_data.make_mosaic((3072, 3072), tile=512, seed=sample_data.SAMPLE_SEED)
    return lambda *args, **kwargs: made


@pytest.fixture(autouse=True)
def fast_mosaic(monkeypatch, mosaic_once):
    from napari_gradcam._napari import sample_data

    monkeypatch.setattr(sample_data, "make_mosaic", mosaic_once)


@pytest.fixture
def clean_notifications():
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    yield
    notification_manager.records.clear()


def errors():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [n.message for n in notification_manager.records if n.severity == NotificationSeverity.ERROR]


def messages():
    from napari.utils.notifications import notification_manager

    return [n.message for n in notification_manager.records]


def panel_of(viewer):
    from napari_gradcam._napari.panel import PANEL

    return dock(viewer, PANEL)


def pickers(panel) -> dict:
    """The image each image-taking tab will use, by tab."""
    return {tab: panel.widgets[tab].image.value for tab in IMAGE_TABS}


# ----------------------------------------------------------------------------- 1. the image one looks at
@pytest.mark.parametrize("order", [("xray_pneumonia", "xray_mosaic"), ("xray_mosaic", "xray_pneumonia")])
@pytest.mark.parametrize("docked", ["before", "after"])
def test_pickers_follow_the_newest_image_and_the_image_of_an_active_outline(make_napari_viewer, order, docked):
    viewer = make_napari_viewer()
    panel = panel_of(viewer) if docked == "before" else None
    for key in order:
        viewer.open_sample(PLUGIN, key)
    # the sample's outline (a Labels layer) is active, the picker cannot choose it: its image, the newest
    assert type(viewer.layers.selection.active).__name__ == "Labels"
    panel = panel or panel_of(viewer)
    newest = viewer.layers[order[-1]]
    assert all(layer is newest for layer in pickers(panel).values()), pickers(panel)
    # and the widget says so
    caption = panel.widgets["tiled"].image._gradcam_caption[0].text()
    assert f"<b>{order[-1]}</b>" in caption
    # the outline of the first image made active: its image, in every tab
    first_outline = next(layer for layer in viewer.layers if layer.metadata.get("image") == order[0]
                         and type(layer).__name__ == "Labels")
    viewer.layers.selection.active = first_outline
    assert all(layer is viewer.layers[order[0]] for layer in pickers(panel).values())
    # an image made active is taken as it is
    viewer.layers.selection.active = newest
    assert all(layer is newest for layer in pickers(panel).values())


def test_a_drawn_outline_over_one_image_picks_that_image(make_napari_viewer):
    viewer = make_napari_viewer()
    small = viewer.add_image(np.zeros((40, 40), np.float32), name="small")
    viewer.add_image(np.zeros((90, 70), np.float32), name="big")
    panel = panel_of(viewer)
    viewer.add_labels(np.zeros((40, 40), np.uint8), name="drawn")  # over "small" only: same place
    assert all(layer is small for layer in pickers(panel).values())
    viewer.add_shapes(name="sketch")  # an empty Shapes layer belongs to no image: the newest one
    assert all(layer is viewer.layers["big"] for layer in pickers(panel).values())


def test_classify_uses_the_image_on_screen_after_a_second_sample(make_napari_viewer, qtbot, model_file):
    viewer = make_napari_viewer()
    panel = panel_of(viewer)
    load(qtbot, viewer, model_file)
    viewer.open_sample(PLUGIN, "xray_normal")
    viewer.open_sample(PLUGIN, "xray_pneumonia")  # its lesion outline is the active layer now
    cw = panel.widgets["classify"]
    cw.run()
    wait(qtbot, cw)
    assert cw.last_error is None
    assert "gradcam_prediction" in viewer.layers["xray_pneumonia"].metadata
    assert "gradcam_prediction" not in viewer.layers["xray_normal"].metadata


def test_outline_follows_the_heatmaps_image_and_a_foreign_one_is_refused(make_napari_viewer, qtbot, model_file,
                                                                          clean_notifications):
    viewer = make_napari_viewer()
    panel = panel_of(viewer)  # docked before anything is open (the reported case)
    load(qtbot, viewer, model_file)
    viewer.open_sample(PLUGIN, "xray_mosaic")
    viewer.open_sample(PLUGIN, "xray_pneumonia")
    lw = panel.widgets["outline"]
    ew = panel.widgets["explain"]
    assert ew.image.value is viewer.layers["xray_pneumonia"]
    ew.run(method="gradcam", target="pneumonia")
    wait(qtbot, ew)
    assert ew.last_error is None
    heat = ew.layers_added[0]
    assert lw.heatmap.value is heat
    assert lw.outline.value is viewer.layers["xray_pneumonia_lesion"]  # not the mosaic's class map
    assert "xray_pneumonia_lesion" in lw.pairing.text()
    lw.run()
    wait(qtbot, lw)
    assert lw.last_error is None and lw.result is not None
    # the mosaic's class map against the pneumonia heatmap: one sentence, nothing scored
    lw.result = None
    assert lw.run(outline=viewer.layers["xray_mosaic_classes"]) is None
    assert lw.result is None and lw.table.rowCount() > 0  # the table still shows the run that was right
    assert "does not belong to 'xray_pneumonia'" in errors()[-1] and errors()[-1].count(".") == 1
    assert "does not belong" in lw.pairing.text()


# ----------------------------------------------------------------------------- 2. one screen
def _inside(widget, window) -> bool:
    from qtpy.QtCore import QPoint, QRect

    top_left = widget.mapTo(window, QPoint(0, 0))
    return widget.isVisible() and QRect(QPoint(0, 0), window.size()).contains(
        QRect(top_left, widget.size()))


def test_the_panel_fits_1280_by_800_with_every_run_button_in_view(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QApplication, QLineEdit

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1280, 800)
    panel = panel_of(viewer)
    window = viewer.window._qt_window
    QApplication.processEvents()
    assert window.width() <= 1280 and window.height() <= 800
    tabs = [panel.tabs.tabText(i) for i in range(panel.tabs.count())]
    assert tabs[:8] == ["Model", "Classify", "Explain", "Compare", "Tiled", "Features", "Train", "Outline"]
    for i, title in enumerate(tabs):
        panel.tabs.setCurrentIndex(i)
        QApplication.processEvents()
        widget = panel.widgets[title.lower()]
        buttons = [b for b in (getattr(widget, "run_button", None), *getattr(widget, "busy_buttons", ())) if b]
        assert buttons, title
        for button in buttons:
            assert _inside(button, window), (title, button.text())
            assert button.height() >= button.sizeHint().height() - 1, (title, button.text())
        for edit in widget.findChildren(QLineEdit):  # never squeezed below its size hint (the 18 px line edit)
            if edit.isVisible() and edit.parent() is not None and type(edit.parent()).__name__ == "QWidget":
                assert edit.height() >= edit.sizeHint().height(), (title, edit.objectName())
        progress = getattr(widget, "progress_bar", None)
        assert progress is not None and _inside(progress, window) and _inside(widget.cancel_button, window), title


def test_every_tab_comes_from_one_list(make_napari_viewer, monkeypatch):
    """The panel's tabs are TABS, in order, Evaluate and Audit included; a missing module is an error."""
    from napari_gradcam._napari import panel as panel_module

    assert [t for t, _ in panel_module.tab_classes()] == [
        "Model", "Classify", "Explain", "Compare", "Tiled", "Features", "Train", "Outline", "Evaluate", "Audit"]
    broken = panel_module.Tab("Broken", "no_such_widget_module", "X")
    with pytest.raises(ModuleNotFoundError):
        panel_module.tab_classes((broken,))


def test_compare_shows_progress_disables_its_button_labels_the_grid_and_moves_the_view(
        make_napari_viewer, qtbot, model_file):
    from napari_gradcam._napari.jobs import JobState
    from napari_gradcam.phantoms import make_xray

    viewer = make_napari_viewer(show=True)
    panel = panel_of(viewer)
    load(qtbot, viewer, model_file)
    src = viewer.add_image(make_xray("pneumonia", size=48, seed=3).image, name="xray")
    cw = panel.show_tab("compare")
    from napari_gradcam.compare import default_methods

    assert list(cw.methods.value) == default_methods(None) and list(cw.params.methods) == default_methods(None)
    methods = ["gradcam", "saliency", "integrated-gradients"]
    cw.run(methods=methods, target="pneumonia")
    assert cw.jobs.status is JobState.RUNNING
    assert not cw.run_button.isEnabled() and cw.cancel_button.isEnabled()
    assert cw.progress_bar.maximum() == len(methods)
    wait(qtbot, cw)
    assert cw.last_error is None and cw.jobs.status is JobState.DONE
    assert cw.run_button.isEnabled() and not cw.cancel_button.isEnabled()
    assert cw.progress_bar.value() == len(methods)
    # labelled cells: a Points layer whose text names each map (method and class)
    labels = [layer for layer in viewer.layers if layer.metadata.get("widget") == "compare labels"]
    assert len(labels) == 1
    assert list(labels[0].features["label"]) == ["Grad-CAM", "Saliency", "Integrated Gradients"]
    assert labels[0].text.visible
    # the view moved to the grid: its centre is that of the image and the maps together
    grid = cw.compare_layers_added
    ext = np.asarray([layer.extent.world[:, -2:] for layer in [src, *grid]])
    centre = (ext[:, 0].min(axis=0) + ext[:, 1].max(axis=0)) / 2
    from napari_gradcam._napari._base import camera_of

    np.testing.assert_allclose(camera_of(viewer).center[-2:], centre, atol=1e-6)
    # the table: every column as wide as its widest cell, rows tall enough for wrapped headers
    t = cw.compare_table
    metrics = t.fontMetrics()
    for j in range(t.columnCount()):
        widest = max(metrics.horizontalAdvance(t.item(i, j).text()) for i in range(t.rowCount()))
        assert t.columnWidth(j) >= widest, j
    assert t.horizontalScrollBar().maximum() == 0  # nothing to the right of the dock's edge
    # running again replaces the labels with the maps
    cw.run(methods=["gradcam"])
    wait(qtbot, cw)
    labels = [layer for layer in viewer.layers if layer.metadata.get("widget") == "compare labels"]
    assert len(labels) == 1 and len(labels[0].data) == 1


def test_cancel_stops_compare_and_the_state_says_so(make_napari_viewer, qtbot, model_file):
    from napari_gradcam._napari.jobs import JobState
    from napari_gradcam.phantoms import make_xray

    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    viewer.add_image(make_xray("pneumonia", size=48, seed=3).image, name="xray")
    cw = dock(viewer, "Compare methods")
    assert cw.jobs.status is JobState.IDLE
    cw.run(methods=["gradcam", "saliency", "integrated-gradients", "gradcam++", "layercam"])
    cw.cancel()
    wait(qtbot, cw)
    assert cw.jobs.status is JobState.STOPPED
    assert not [layer for layer in viewer.layers if layer.metadata.get("widget") == "compare"]
    assert cw.run_button.isEnabled()


def test_a_failed_job_is_crashed(make_napari_viewer, qtbot, model_file, clean_notifications):
    from napari_gradcam._napari.jobs import JobState

    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    src = viewer.add_image(np.full((40, 40), np.nan, np.float32), name="void", contrast_limits=(0, 1))
    ew.run(src, method="gradcam", target="pneumonia")  # the engine refuses it in the job
    wait(qtbot, ew)
    assert ew.last_error is not None and ew.jobs.status is JobState.CRASHED
    assert ew.run_button.isEnabled()


# ----------------------------------------------------------------------------- 3. signed maps, controls
def test_signed_maps_are_translucent_and_visible_over_bright_bone(make_napari_viewer, qtbot, model_file):
    from napari_gradcam._napari.demo import has_colour

    viewer = make_napari_viewer(show=True)
    load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    rng = np.random.default_rng(0)
    bright = (230 + 20 * rng.random((48, 48))).astype(np.float32)  # white as bone: additive blending saturates
    src = viewer.add_image(bright, name="bone", contrast_limits=(0, 255))
    ew.run(src, method="integrated-gradients", target="pneumonia")
    wait(qtbot, ew)
    heat = ew.layers_added[0]
    assert heat.metadata["signed"] and heat.blending == "translucent"
    lo, hi = heat.contrast_limits
    assert lo == -hi  # centred at 0
    rgba = heat.colormap.map(np.array([0.0, 0.5, 1.0]))
    assert rgba[1, 3] == 0 and rgba[0, 3] == 1 and rgba[2, 3] == 1  # transparent where there is no evidence
    assert rgba[0, 2] > rgba[0, 0] and rgba[2, 0] > rgba[2, 2]  # blue against, red for
    viewer.reset_view()
    assert has_colour(viewer.screenshot(canvas_only=True, flash=False), min_pixels=300)
    heat.blending = "additive"  # the reported failure: the same map added to white bone is not seen
    assert not has_colour(viewer.screenshot(canvas_only=True, flash=False), min_pixels=300)


def test_controls_that_a_method_ignores_are_disabled(make_napari_viewer, qtbot, model_file):
    from napari_gradcam.engine.methods import get_method

    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    for name in ("gradcam", "saliency", "integrated-gradients", "cam", "layercam"):
        ew.method.value = name
        spec = get_method(name)
        assert ew.layer.enabled == (spec.uses_layer and spec.fixed_layer is None), name
        assert ew.shifts.enabled == (spec.family != "attribution"), name
    ew.method.value = "saliency"
    assert "does not use" in ew.layer.native.toolTip()
    ew.method.value = "gradcam"
    assert "does not use" not in ew.layer.native.toolTip()


# ----------------------------------------------------------------------------- 4. one vocabulary
def test_core_messages_get_the_forms_words():
    from napari_gradcam._napari.wording import napari_words

    cases = {
        "m.pt holds bare weights with no description; give the architecture and the class names "
        "(--arch and --classes on the command line).": "architecture and classes fields",
        "m.pt does not say how its inputs were normalised; using ImageNet's: mean [0.485], std [0.229] (give "
        "--mean/--std, or mean=/std=, if it was trained otherwise).": "mean and std fields",
        "m.onnx is an ONNX model without class names; give them (classes=[...], or --classes on the command "
        "line).": "classes field",
        "Use a smaller --tile.": "tile size (Tiled tab)",
    }
    for message, words in cases.items():
        out = napari_words(message)
        assert "--" not in out and "command line" not in out and "=" not in out, out
        assert words in out, out


def test_bare_weights_note_names_fields_and_the_model_tab_sets_mean_and_std(make_napari_viewer, qtbot, tmp_path,
                                                                            clean_notifications):
    import torch

    from napari_gradcam import build_model

    path = tmp_path / "bare.pt"
    torch.save(build_model("simple_cnn", CLASSES, 1, 32).model.state_dict(), path)
    viewer = make_napari_viewer()
    mw = dock(viewer, "Model")
    mw.classes.value = ", ".join(CLASSES)
    mw.input_size.value = 32
    mw.load_file(path)
    wait(qtbot, mw)
    assert mw.state.bundle is not None, mw.last_error
    notes = [m for m in messages() if "normalised" in m]
    assert notes and all("--" not in m for m in messages()), messages()
    assert "mean and std fields" in notes[-1]
    # with mean and std in the form, the model normalises with them
    mw.mean.value, mw.std.value = "0.25", "0.5"
    mw.load_file(path)
    wait(qtbot, mw)
    assert mw.state.bundle.config.mean == [0.25] and mw.state.bundle.config.std == [0.5]
    assert "mean 0.25; std 0.5" in mw.info.text()
    # one without the other, or words: one sentence naming the field, nothing loaded
    mw.std.value = "auto"
    assert mw.load_file(path) is None and "mean and the std field" in errors()[-1]
    mw.std.value = "wide"
    assert mw.build() is None and errors()[-1].startswith("The std field needs numbers")


def test_train_tab_starts_from_the_recipe_and_shows_where_it_saves(make_napari_viewer, tmp_path):
    from dataclasses import fields

    from napari_gradcam.train.config import DEFAULT_SIZE, TrainConfig

    recipe = {f.name: f.default for f in fields(TrainConfig)}
    viewer = make_napari_viewer()
    tw = dock(viewer, "Train")
    assert tw.epochs.value == recipe["epochs"] and float(tw.lr.value) == recipe["lr"]
    assert tw.batch_size.value == recipe["batch_size"] and tw.val_fraction.value == recipe["val_fraction"]
    assert tw.weighting.value == recipe["class_weighting"] and tw.augment.value == recipe["augment"]
    assert tw.architecture.value == recipe["arch"] and tw.image_size.value == DEFAULT_SIZE[recipe["arch"]]
    assert "will be saved to" in tw.output_hint.text()
    data = tmp_path / "chest"
    data.mkdir()
    tw.data_dir.value = data
    from napari_gradcam._napari.train_widget import default_output

    assert str(tw.output.value) == str(default_output(str(data), recipe["arch"]))  # filled before any run
    assert str(default_output(str(data), recipe["arch"])) in tw.output_hint.text()
    tw.architecture.value = "resnet18"  # a recipe size of its own, and its own file name
    assert tw.image_size.value == 224 and str(tw.output.value).endswith("chest-resnet18.safetensors")
    tw.output.value = tmp_path / "mine.safetensors"  # typed by hand: kept
    tw.architecture.value = "simple_cnn"
    assert str(tw.output.value) == str(tmp_path / "mine.safetensors")


def test_a_dicom_layer_in_millimetres_is_explained_without_a_units_clash(make_napari_viewer, qtbot, model_file,
                                                                         tmp_path, clean_notifications):
    pytest.importorskip("pydicom")
    from dicom_helpers import bright_square, write_dicom

    path = write_dicom(tmp_path / "cxr.dcm", bright_square(), bits_stored=12, spacing=(0.2, 0.15))
    viewer = make_napari_viewer(show=True)
    panel = panel_of(viewer)
    load(qtbot, viewer, model_file)
    (src,) = viewer.open(path, plugin=PLUGIN)
    assert [str(u) for u in src.units] == ["millimeter", "millimeter"]
    for tab, kwargs in (("explain", {"method": "gradcam"}), ("explain", {"method": "saliency", "keep": True}),
                        ("features", {}), ("compare", {"methods": ["gradcam", "saliency"]})):
        widget = panel.widgets[tab]
        widget.run(**kwargs)
        wait(qtbot, widget)
        assert widget.last_error is None, (tab, widget.last_error)
    added = [layer for layer in viewer.layers if layer is not src and layer.metadata.get("source") == src.name]
    assert len(added) >= 5
    for layer in added:
        assert [str(u) for u in layer.units][-2:] == ["millimeter", "millimeter"], layer.name
    viewer.reset_view()
    viewer.screenshot(canvas_only=True, flash=False)  # draws every layer in one world
    assert not errors(), errors()

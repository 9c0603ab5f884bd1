"""The "Heatmap vs outline" widget with a real viewer (run under ``xvfb-run -a``)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

# torchvision imports triton, whose LLVM crashes next to Mesa's software OpenGL (xvfb) once a
# viewer exists: import it now, at collection, before any viewer (see _napari/_compat.py).
import torchvision  # noqa: E402,F401

from napari_gradcam.localisation import localisation_scores  # noqa: E402

from napari_helpers import PLUGIN, wait
NAME = "Heatmap vs outline"
CLASSES = ["normal", "pneumonia", "covid"]
SIZE = 64
SQUARE = (slice(20, 40), slice(30, 50))  # the lesion: rows 20..39, columns 30..49


def blob(size=SIZE, centre=(28.0, 42.0), sigma=6.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma**2)).astype(np.float32)


def square_mask(size=SIZE) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[SQUARE] = 1
    return m



def errors():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [n.message for n in notification_manager.records if n.severity == NotificationSeverity.ERROR]


@pytest.fixture
def clean_notifications():
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    yield
    notification_manager.records.clear()


def scene(viewer, scale=(1.0, 1.0), translate=(0.0, 0.0)):
    """An x-ray, an Explain-like heatmap over it (same geometry) and return the heatmap layer."""
    from napari_gradcam.phantoms import make_xray

    geo = {"scale": scale, "translate": translate}
    xray = viewer.add_image(make_xray("pneumonia", size=SIZE, seed=1).image, name="xray", **geo)
    return viewer.add_image(blob(), name="heat", colormap="inferno", blending="additive",
                            metadata={"napari_gradcam": "heatmap", "method": "gradcam", "source": "xray",
                                      "source_id": str(xray.unique_id),  # the very layer, not its name
                                      "target": "pneumonia", "target_index": 1, "slice": []}, **geo)


def compare(qtbot, lw, **kwargs) -> dict:
    worker = lw.run(**kwargs)
    assert worker is not None, lw.last_error
    wait(qtbot, lw)
    assert lw.last_error is None, lw.last_error
    return lw.result


def assert_same(got: dict, want: dict, atol=0.0) -> None:
    assert set(want) <= set(got)
    for key, value in want.items():
        if isinstance(value, bool):
            assert got[key] == value, key
        else:
            np.testing.assert_allclose(got[key], value, atol=atol, err_msg=key)


def test_manifest_and_dock(make_napari_viewer):
    from npe2 import PluginManifest

    from napari_gradcam._napari.localisation_widget import LocalisationWidget

    pm = PluginManifest.from_distribution(PLUGIN)
    assert NAME in {w.display_name for w in pm.contributions.widgets}
    menus = pm.contributions.menus
    assert any(item.command == "napari-gradcam.localisation_widget" for item in menus["napari/layers/measure"])
    viewer = make_napari_viewer()
    _, lw = viewer.window.add_plugin_dock_widget(PLUGIN, NAME)
    assert isinstance(lw, LocalisationWidget)


def test_labels_and_shapes_outline_match_direct_scores(make_napari_viewer, qtbot, clean_notifications):
    from napari_gradcam._napari.localisation_widget import LocalisationWidget

    viewer = make_napari_viewer()
    # outline and heatmap at the same non-trivial world geometry
    geo = {"scale": (2.0, 2.0), "translate": (10.0, 5.0)}
    heat = scene(viewer, **geo)
    labels = viewer.add_labels(square_mask(), name="lesion", **geo)
    lw = LocalisationWidget(viewer)
    # the Explain-made heatmap is preferred over the plain image
    assert lw.heatmap.value is heat and [layer.name for layer in lw.heatmap.choices][:2] == ["heat", "xray"]

    want = localisation_scores(blob(), square_mask(), tolerance=5, level=0.4)
    got = compare(qtbot, lw, heatmap=heat, outline=labels, tolerance=5, level=0.4)
    assert_same(got, want, atol=1e-9)
    assert got["pointing"] is True
    shown = lw.table_values()
    assert shown["pointing game hit"] == "yes" and shown["pointing game hit (± 5 px)"] == "yes"
    assert shown["energy inside outline"] == f"{want['energy']:.3f}"
    assert shown["IoU (Otsu threshold)"] == f"{want['iou_otsu']:.3f}"
    assert shown["Dice (≥ 0.4 × max)"] == f"{want['dice_fixed']:.3f}"
    assert "deletion AUC (lower is better)" not in shown

    # a Shapes rectangle over the same square, drawn in world coordinates, in a layer without scale
    y0, x0 = 10.0 + 2.0 * 19.5, 5.0 + 2.0 * 29.5  # the square's outer pixel edges in world coordinates
    y1, x1 = 10.0 + 2.0 * 39.5, 5.0 + 2.0 * 49.5
    shapes = viewer.add_shapes([np.array([[y0, x0], [y1, x1]])], shape_type="rectangle", name="drawn")
    got_s = compare(qtbot, lw, outline=shapes)
    assert_same(got_s, want, atol=0.02)

    # a Labels outline at twice the resolution (scale 1) resampled onto the heatmap's grid
    fine = np.kron(square_mask(), np.ones((2, 2), np.uint8))
    hires = viewer.add_labels(fine, name="fine", scale=(1.0, 1.0), translate=(9.5, 4.5))
    assert_same(compare(qtbot, lw, outline=hires), want, atol=1e-9)

    # a heatmap pointing elsewhere misses
    far = viewer.add_image(blob(centre=(55.0, 8.0)), name="far", **geo)
    got_far = compare(qtbot, lw, heatmap=far, outline=labels, tolerance=0)
    assert got_far["pointing"] is False and lw.table_values()["pointing game hit"] == "no"


def test_stack_outline_uses_heatmap_slice(make_napari_viewer, qtbot):
    from napari_gradcam._napari.localisation_widget import LocalisationWidget

    viewer = make_napari_viewer()
    stack = np.zeros((3, SIZE, SIZE), np.uint8)
    stack[1][SQUARE] = 1  # only slice 1 has the lesion
    viewer.add_labels(stack, name="lesions")
    # an Explain heatmap of slice 1: a leading axis of length 1 placed at index 1
    heat = viewer.add_image(blob()[None], name="heat", translate=(1.0, 0.0, 0.0), metadata={"method": "cam"})
    viewer.dims.set_point(0, 2)  # the viewer shows another slice: the heatmap's own slice is used
    lw = LocalisationWidget(viewer)
    got = compare(qtbot, lw, heatmap=heat, outline=viewer.layers["lesions"], tolerance=0, level=0.5)
    assert_same(got, localisation_scores(blob(), square_mask(), 0, 0.5), atol=1e-9)


def test_errors_are_notifications(make_napari_viewer, qtbot, clean_notifications):
    from napari_gradcam._napari.localisation_widget import LocalisationWidget

    viewer = make_napari_viewer()
    lw = LocalisationWidget(viewer)
    assert lw.run() is None and "no heatmap layer" in errors()[-1]
    heat = scene(viewer)
    assert lw.run() is None and "no outline" in errors()[-1].lower()
    empty = viewer.add_labels(np.zeros((SIZE, SIZE), np.uint8), name="empty")
    assert lw.run(heatmap=heat, outline=empty) is None and "is empty" in errors()[-1]
    away = viewer.add_labels(square_mask(), name="away", translate=(500.0, 500.0))
    assert lw.run(outline=away) is None and "lies outside the heatmap" in errors()[-1]
    no_shapes = viewer.add_shapes(name="no shapes")
    assert lw.run(outline=no_shapes) is None and "is empty" in errors()[-1]
    # curves without a model
    ok = viewer.add_labels(square_mask(), name="ok")
    assert lw.run(outline=ok, curves=True) is None and "No model is loaded" in errors()[-1]
    assert all("Traceback" not in m and "\n" not in m for m in errors())
    assert lw.result is None and len(viewer.layers) == 6


def test_deletion_insertion_curves(make_napari_viewer, qtbot, clean_notifications):
    import torch

    from napari_gradcam import build_model
    from napari_gradcam._napari.localisation_widget import LocalisationWidget
    from napari_gradcam._napari.state import get_state
    from napari_gradcam.localisation import deletion_insertion
    from napari_gradcam.phantoms import make_xray

    torch.manual_seed(0)
    bundle = build_model("simple_cnn", CLASSES, 1, SIZE)
    viewer = make_napari_viewer()
    get_state(viewer).set_model(bundle, "test")
    heat = scene(viewer)
    labels = viewer.add_labels(square_mask(), name="lesion")
    lw = LocalisationWidget(viewer)
    got = compare(qtbot, lw, heatmap=heat, outline=labels, curves=True)
    want = deletion_insertion(bundle, make_xray("pneumonia", size=SIZE, seed=1).image, blob(), "pneumonia")
    np.testing.assert_allclose([got["deletion_auc"], got["insertion_auc"]],
                               [want["deletion_auc"], want["insertion_auc"]], atol=1e-6)
    shown = lw.table_values()
    assert shown["insertion AUC (higher is better)"] == f"{want['insertion_auc']:.3f}"
    # a heatmap that does not name its source image: one sentence
    plain = viewer.add_image(blob(), name="plain")
    assert lw.run(heatmap=plain) is None and "not in the viewer" in errors()[-1]

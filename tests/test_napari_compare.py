"""The Explain widget's "Compare methods" action and signed heatmaps, with real viewers (under ``xvfb-run -a``)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

# torchvision before any viewer (see _napari/_compat.py)
import torchvision  # noqa: E402,F401

from napari_helpers import dock, load, wait, save_tiny_model  # noqa: E402

CLASSES = ["normal", "pneumonia", "covid"]
SCALE, TRANSLATE = (2.0, 2.0), (10.0, 5.0)
METHODS = ["gradcam", "cam", "saliency", "integrated-gradients", "ablationcam"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained simple_cnn (3 classes, 32 px) saved as a bundle."""
    return save_tiny_model(tmp_path_factory, CLASSES, 32)


@pytest.fixture
def xray():
    from napari_gradcam.phantoms import make_xray

    return make_xray("pneumonia", size=48, seed=3).image


def test_compare_methods_grid_and_table(make_napari_viewer, qtbot, model_file, xray):
    from napari_gradcam import compare_methods, load_model

    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    ew = dock(viewer, "Compare methods")
    src = viewer.add_image(xray, name="xray", scale=SCALE, translate=TRANSLATE)
    assert not ew.compare_table.isVisible() and ew.compare_table.isHidden()
    ew.target.value = "pneumonia"
    ew.compare(src, methods=METHODS)
    wait(qtbot, ew)
    assert ew.last_error is None
    grid = [layer for layer in viewer.layers if layer.metadata.get("widget") == "compare"]
    assert [g.metadata["method"] for g in grid] == METHODS
    from napari_gradcam._napari.layers import result_name

    titles = ("Grad-CAM", "CAM", "Saliency", "Integrated Gradients", "Ablation-CAM")
    assert [g.name for g in grid] == [result_name(f"{t} pneumonia", "xray") for t in titles]
    assert [g.name.rsplit(" [", 1)[0] for g in grid] == [f"{t} pneumonia" for t in titles]  # never cut
    # the same maps as the core computes; signed ones on the diverging colormap in [-1, 1]
    want = compare_methods(load_model(model_file), xray, methods=METHODS, target="pneumonia")
    for g, row in zip(grid, want.rows):
        np.testing.assert_allclose(g.data, row.heatmap.data, atol=1e-5)
        assert g.metadata["signed"] == row.signed
        assert tuple(g.contrast_limits) == ((-1.0, 1.0) if row.signed else (0.0, 1.0))
        np.testing.assert_allclose(g.scale, SCALE)
    assert grid[3].colormap.name == "signed evidence" and grid[0].colormap.name == "inferno"
    # a grid beside the image: 5 maps in 2 rows of 3, every cell a different place right of the image
    h, w = xray.shape
    cells = {(round((g.translate[0] - TRANSLATE[0]) / (SCALE[0] * h)), round((g.translate[1] - TRANSLATE[1]) / (SCALE[1] * w)))
             for g in grid}
    assert cells == {(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)}
    # the table lists the scores of every method
    assert ew.compare_table.isVisibleTo(ew) and ew.compare_table.rowCount() == len(METHODS)
    cells = ew.compare_table.cells()
    assert [c[0] for c in cells] == [r.title for r in want.rows]
    assert cells[0][1] == f"{want.rows[0].deletion_auc:.3f}" and cells[2][3] == f"{want.rows[2].randomisation_correlation:.3f}"
    # running again replaces the grid of the same source
    ew.compare(src, methods=["gradcam"])
    wait(qtbot, ew)
    assert [layer.metadata["method"] for layer in viewer.layers if layer.metadata.get("widget") == "compare"] == ["gradcam"]
    assert ew.compare_table.rowCount() == 1


def test_signed_heatmap_layer_keeps_its_sign(make_napari_viewer, qtbot, model_file, xray):
    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    assert "integrated-gradients" in [c[1] if isinstance(c, tuple) else c for c in ew.method.choices]
    src = viewer.add_image(xray, name="xray")
    ew.run(src, method="integrated-gradients", target="pneumonia")
    wait(qtbot, ew)
    assert ew.last_error is None
    heat = viewer.layers[-1]
    assert heat.metadata["signed"] and heat.colormap.name == "signed evidence"
    assert tuple(heat.contrast_limits) == (-1.0, 1.0)
    assert heat.data.min() < 0 < heat.data.max() and np.abs(heat.data).max() <= 1

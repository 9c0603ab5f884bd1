"""The Audit widget in a real viewer (Xvfb): a stack layer audited through the job runner; the layers, the
findings table and the embedding scatter move the stack to the right image."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_helpers import wait  # noqa: E402


@pytest.fixture
def stack():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 200, (30, 40, 40), dtype=np.uint8)
    images[::3, 2:10, 2:10] = 255
    return images


def test_audit_widget_layers_table_and_scatter(make_napari_viewer, qtbot, stack, torch_one_thread):
    import torch

    import napari_gradcam as ng
    from napari_gradcam._napari.audit_widget import AuditWidget
    from napari_gradcam._napari.model_api import use_model

    viewer = make_napari_viewer()
    torch.manual_seed(0)
    b = ng.build_model("simple_cnn", classes=["a", "b"], in_channels=1, input_size=32)
    use_model(viewer, b)
    layer = viewer.add_image(stack, name="films")
    w = AuditWidget(viewer)
    w.source.value = "stack"
    assert w.run(layer) is not None
    wait(qtbot, w)
    assert w.last_error is None and w.audit is not None
    names = [lyr.name for lyr in viewer.layers]
    assert {"audit images", "audit heatmaps", "audit boxes", "mean map: a", "mean map: b"} <= set(names)
    images, heat = viewer.layers["audit images"], viewer.layers["audit heatmaps"]
    assert images.data.shape == (30, 128, 128) and heat.data.shape[0] == 30
    table = images.metadata["table"]
    assert len(table) == 30 and list(table["path"]) == [w.audit.table["path"].iloc[i] for i in w.order]
    boxes = viewer.layers["audit boxes"]
    assert list(boxes.features["path"]) == list(table["path"])  # one box per image, its row as features
    # heatmap planes sit over the images: the same pixel edges (extent.world spans pixel centres)
    def edges(layer):
        half = np.asarray(layer.scale[1:]) / 2
        return layer.extent.world[0][1:] - half, layer.extent.world[1][1:] + half

    for a, b in zip(edges(heat), edges(images)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert len(boxes.data) == 30 and all(int(s[0, 0]) == k for k, s in enumerate(boxes.data))
    assert w.table.rowCount() == len(w.audit.clusters)
    last = w.table.rowCount() - 1
    w._on_finding_clicked(last)
    plane = viewer.dims.current_step[0]
    assert int(table["cluster"].iloc[plane]) == w.audit.clusters[last]["id"]

    class Pick:
        ind = np.array([17])

    w._on_pick(Pick())
    assert viewer.dims.current_step[0] == 17
    masks = np.zeros(stack.shape, np.uint8)
    masks[:, :, :20] = 1
    viewer.add_labels(masks, name="lungs")
    w.reset_choices()
    w.mask_layer.value = "lungs"
    w.run(layer)  # a second run, with a Labels layer's masks, replaces the layers
    wait(qtbot, w)
    assert [lyr.name for lyr in viewer.layers].count("audit images") == 1
    outside = w.audit.table["outside_mask_share"]
    assert outside.notna().all() and (outside >= 0).all() and (outside <= 1).all()

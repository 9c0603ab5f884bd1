"""The Train widget: trains in a worker on tiny phantom data, can be cancelled, loads its model."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import torchvision  # noqa: E402,F401  - before any viewer: see _napari/_compat.py

PLUGIN = "napari-gradcam"


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    from napari_gradcam.phantoms import write_dataset

    return write_dataset(tmp_path_factory.mktemp("phantoms") / "data", 16, size=32, seed=0)


def test_train_widget_trains_and_loads_model(make_napari_viewer, qtbot, phantom_dir, tmp_path):
    viewer = make_napari_viewer()
    _, tw = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    _, mw = viewer.window.add_plugin_dock_widget(PLUGIN, "Model")
    _, ew = viewer.window.add_plugin_dock_widget(PLUGIN, "Explain (Grad-CAM)")
    out = tmp_path / "trained.safetensors"
    worker = tw.run(data_dir=phantom_dir, output=out, architecture="simple_cnn", image_size=32, epochs=1,
                    batch_size=16, device="cpu")
    assert worker is not None and tw.busy
    qtbot.waitUntil(lambda: not tw.busy, timeout=90_000)
    assert tw.last_error is None
    res = tw.result
    assert res is not None and not res.stopped and res.epochs_done == 1
    assert out.is_file()
    # the best model is the viewer's model: the Model widget shows it, the other widgets use it
    assert tw.state.bundle is res.bundle and tw.state.source == str(out)
    assert set(tw.state.bundle.classes) == {"normal", "pneumonia", "covid"}
    assert str(out) in mw.info.text() and set(res.bundle.classes) < set(ew.target.choices)
    # live progress and the evaluation report with its confusion matrix
    kinds = {e.kind for e in tw.events}
    assert {"start", "batch", "epoch", "done"} <= kinds
    assert tw.progress_bar.value() == tw.progress_bar.maximum()
    assert tw.confusion.rowCount() == 3 and tw.confusion.columnCount() == 3
    total = sum(int(tw.confusion.item(i, j).text()) for i in range(3) for j in range(3))
    assert total == res.summary["n_val"]
    assert "balanced accuracy" in tw.report_label.text()
    if tw.curves.fig is not None:
        assert tw.curves.batch_loss and len(tw.curves.epochs) == 1


def test_train_widget_cancel(make_napari_viewer, qtbot, phantom_dir, tmp_path):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    _, tw = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    notification_manager.records.clear()
    tw.run(data_dir=phantom_dir, output=tmp_path / "never.safetensors", image_size=32, epochs=200, batch_size=4)
    qtbot.waitUntil(lambda: any(e.kind == "batch" for e in tw.events), timeout=60_000)
    assert tw.cancel_button.isEnabled()
    tw.cancel()
    qtbot.waitUntil(lambda: not tw.busy, timeout=30_000)
    res = tw.result
    assert res.stopped and res.epochs_done < 200
    assert tw.events[-1].kind == "stopped"
    assert any("stopped" in n.message for n in notification_manager.records)
    # nothing half-written; the state has no model unless an epoch finished
    if res.epochs_done == 0:
        assert tw.state.bundle is None and not Path(tmp_path / "never.safetensors").exists()


def test_train_widget_bad_folder_is_a_notification(make_napari_viewer, tmp_path):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    _, tw = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    notification_manager.records.clear()
    assert tw.run(data_dir=tmp_path / "missing") is None
    assert "data folder" in notification_manager.records[-1].message


def test_train_widget_chooses_a_finding_to_unlearn(make_napari_viewer, phantom_dir, tmp_path):
    """The Train tab lists an audit folder's findings; the choice becomes TrainConfig.unlearn (A-ClArC):
    AUDIT_DIR for every likely shortcut, AUDIT_DIR:ID for one; nothing chosen, none."""
    import json

    viewer = make_napari_viewer()
    _, tw = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    tw.data_dir.value = phantom_dir
    assert tw.config().unlearn is None and list(tw.finding.choices) == ["every likely shortcut"]
    audit = tmp_path / "audit"
    audit.mkdir()
    (audit / "findings.json").write_text(json.dumps({"clusters": [
        {"id": 3, "class": "pneumonia", "size": 5, "verdict": "likely shortcut"},
        {"id": 1, "class": "normal", "size": 40, "verdict": "no evidence"}]}))
    tw.unlearn.value = audit
    assert list(tw.finding.choices) == ["every likely shortcut", "3: pneumonia, 5 images (likely shortcut)",
                                        "1: normal, 40 images (no evidence)"]
    assert tw.config().unlearn == str(audit)
    tw.finding.value = "3: pneumonia, 5 images (likely shortcut)"
    assert tw.config().unlearn == f"{audit}:3"

"""GUI faults: a source layer deleted mid-run, two runs at once, a model switched mid-run, the viewer
closed during training, a failed model load.  napari stays up and says what happened."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import torchvision  # noqa: E402,F401  - before any viewer: see _napari/_compat.py

CLASSES = ["normal", "pneumonia", "covid"]
from napari_helpers import PLUGIN, wait, dock, load


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import torch

    from napari_gradcam import build_model, save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(build_model("simple_cnn", CLASSES, 1, 64), path)
    return path


@pytest.fixture(scope="module")
def other_model_file(tmp_path_factory):
    from napari_gradcam import build_model, save_model

    path = tmp_path_factory.mktemp("model2") / "other.safetensors"
    save_model(build_model("simple_cnn", ["cat", "dog"], 1, 32), path)
    return path


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    from napari_gradcam.phantoms import write_dataset

    return write_dataset(tmp_path_factory.mktemp("phantoms") / "data", 8, size=32, seed=0)


@pytest.fixture
def xray():
    from napari_gradcam.phantoms import make_xray

    return make_xray("pneumonia", size=128, seed=3).image


@pytest.fixture
def clean_notifications():
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    yield notification_manager.records
    notification_manager.records.clear()


@pytest.fixture
def slow_explain(monkeypatch):
    """explain() takes at least 0.8 s, so the test can act while the worker runs."""
    import napari_gradcam.explain as ex

    real = ex.explain

    def slow(*args, **kwargs):
        time.sleep(0.8)
        return real(*args, **kwargs)

    monkeypatch.setattr(ex, "explain", slow)





def messages(records):
    return [n.message for n in records]


def heatmap_layers(viewer):
    from napari_gradcam._napari.layers import is_plugin_layer

    return [layer for layer in viewer.layers if is_plugin_layer(layer)]


def test_source_layer_deleted_while_explaining(make_napari_viewer, qtbot, model_file, xray, slow_explain,
                                               clean_notifications):
    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    src = viewer.add_image(xray, name="xray")
    assert ew.run(src, method="gradcam", target="pneumonia") is not None and ew.busy
    viewer.layers.remove(src)
    wait(qtbot, ew)
    assert ew.last_error is None
    assert heatmap_layers(viewer) == [] and len(viewer.layers) == 0
    assert any("'xray' was removed" in m and "no heatmap" in m for m in messages(clean_notifications))


def test_two_explain_runs_at_once(make_napari_viewer, qtbot, model_file, xray, slow_explain, clean_notifications):
    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    src = viewer.add_image(xray, name="xray")
    first = ew.run(src, method="gradcam", target="pneumonia")
    assert first is not None and not ew.run_button.isEnabled()
    ew.run_button.click()  # disabled: nothing happens
    assert ew.run(src, method="gradcam", target="covid") is None  # refused, with a notification
    assert ew.worker is first
    assert any("still running" in m for m in messages(clean_notifications))
    wait(qtbot, ew)
    heats = heatmap_layers(viewer)
    assert len(heats) == 1 and heats[0].metadata["target"] == "pneumonia"
    assert ew.run_button.isEnabled()
    # a second run afterwards replaces the first set: still one heatmap
    ew.run(src, method="gradcam", target="covid")
    wait(qtbot, ew)
    heats = heatmap_layers(viewer)
    assert len(heats) == 1 and heats[0].metadata["target"] == "covid"


def test_model_switched_mid_run(make_napari_viewer, qtbot, model_file, other_model_file, xray, slow_explain,
                                clean_notifications):
    viewer = make_napari_viewer()
    mw = load(qtbot, viewer, model_file)
    old = mw.state.bundle
    old_name = mw.state.name
    ew = dock(viewer, "Explain (Grad-CAM)")
    src = viewer.add_image(xray, name="xray")
    ew.run(src, method="gradcam", target="pneumonia")
    mw.load_file(other_model_file)  # finishes while explain still sleeps
    wait(qtbot, mw)
    wait(qtbot, ew)
    assert ew.last_error is None
    new = mw.state.bundle
    assert new is not old and new.classes == ["cat", "dog"]
    heats = heatmap_layers(viewer)
    assert len(heats) == 1
    meta = heats[0].metadata
    # the result is the old model's, and labelled so
    assert meta["target"] == "pneumonia" and meta["model"] == old_name and "tiny" in meta["model"]
    # the widgets now follow the new model
    assert "cat" in ew.target.choices and "pneumonia" not in ew.target.choices


def test_failed_load_keeps_previous_model(make_napari_viewer, qtbot, model_file, tmp_path, clean_notifications):
    viewer = make_napari_viewer()
    mw = load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    before, source = mw.state.bundle, mw.state.source
    for bad, content in (("truncated.safetensors", model_file.read_bytes()[:100]), ("missing.safetensors", None)):
        path = tmp_path / bad
        if content is not None:
            path.write_bytes(content)
        mw.load_file(path)
        wait(qtbot, mw)
        assert mw.state.bundle is before and mw.state.source == source
        assert mw.last_error and bad in mw.last_error
    assert set(CLASSES) < set(ew.target.choices)
    # the previous model still works
    src = viewer.add_image(np.zeros((64, 64), np.uint8), name="blank")
    ew.run(src, target="normal")
    wait(qtbot, ew)
    assert ew.last_error is None and len(heatmap_layers(viewer)) == 1


def test_viewer_closed_during_training(make_napari_viewer, qtbot, phantom_dir, tmp_path, clean_notifications):
    from napari_gradcam import load_model

    viewer = make_napari_viewer()
    tw = dock(viewer, "Train")
    out = tmp_path / "closing.safetensors"
    worker = tw.run(data_dir=phantom_dir, output=out, architecture="simple_cnn", image_size=32, epochs=500,
                    batch_size=8, device="cpu")
    assert worker is not None
    qtbot.waitUntil(lambda: any(e.kind == "checkpoint" for e in tw.events), timeout=60_000)
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    viewer.close()
    qtbot.waitUntil(lambda: bool(finished) or not worker.is_running, timeout=30_000)
    res = tw.result
    assert res is None or (res.stopped and res.epochs_done < 500)
    assert out.is_file()
    bundle = load_model(out, device="cpu")
    assert set(bundle.classes) == set(CLASSES)


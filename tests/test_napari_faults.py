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
    import napari_gradcam.engine as ex

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
    assert ew.run(src, method="gradcam++", target="covid") is None  # refused, with a notification
    assert ew.worker is first
    assert ew.method.value == "gradcam" and ew.target.value == "pneumonia"  # the form is left as it was
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



# ----------------------------------------------------------------------------- tiled heatmaps / feature maps
# The core is held at a gate (a threading.Event) instead of slowed by sleeps: the test acts while the
# worker waits there, then opens the gate.  Once open it stays open, so later runs go straight through.
class Gate:
    def __init__(self) -> None:
        import threading

        self.entered = threading.Event()  # a worker reached the gate
        self.release = threading.Event()  # the test opened it
        self.bundles: list = []  # the model each run computed with
        self.completed = 0  # runs whose core went to its end

    def pass_through(self) -> None:
        self.entered.set()
        if not self.release.wait(30):
            raise RuntimeError("the test never opened the gate")


@pytest.fixture
def gated_tiling(monkeypatch):
    """iter_tiled_heatmaps stops at a gate after its first progress step, (0, total)."""
    import napari_gradcam.engine as ex

    real = ex.iter_tiled_heatmaps
    gate = Gate()

    def gated(bundle, *args, **kwargs):
        gate.bundles.append(bundle)
        gen = real(bundle, *args, **kwargs)
        yield next(gen)
        gate.pass_through()
        result = yield from gen
        gate.completed += 1
        return result

    monkeypatch.setattr(ex, "iter_tiled_heatmaps", gated)
    yield gate
    gate.release.set()


def _gate_call(monkeypatch, name: str):
    """Replace ``napari_gradcam.engine.<name>`` by a version that waits at a gate before computing."""
    import napari_gradcam.engine as ex

    real = getattr(ex, name)
    gate = Gate()

    def gated(bundle, *args, **kwargs):
        gate.bundles.append(bundle)
        gate.pass_through()
        result = real(bundle, *args, **kwargs)
        gate.completed += 1
        return result

    monkeypatch.setattr(ex, name, gated)
    return gate


@pytest.fixture
def gated_features(monkeypatch):
    """feature_maps waits at a gate before computing."""
    gate = _gate_call(monkeypatch, "feature_maps")
    yield gate
    gate.release.set()


def hooks_left(*bundles) -> list:
    """(module, kind) of every hook still registered on the bundles' networks."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return [(name, kind) for b in bundles for name, m in b.model.named_modules() for kind in kinds
            if getattr(m, kind, None)]


def assert_idle(widget, *bundles) -> None:
    """The job is over and left nothing behind: buttons back, model lock free, no hooks."""
    assert not widget.busy and widget.run_button.isEnabled()
    if hasattr(widget, "cancel_button"):
        assert not widget.cancel_button.isEnabled()
    assert widget.state.lock.acquire(blocking=False)
    widget.state.lock.release()
    assert hooks_left(*bundles) == []


def tiled(viewer):
    return [layer for layer in viewer.layers if layer.metadata.get("widget") == "tiled"]


def test_source_layer_deleted_while_tiling(make_napari_viewer, qtbot, model_file, xray, gated_tiling,
                                           clean_notifications):
    viewer = make_napari_viewer()
    mw = load(qtbot, viewer, model_file)
    tw = dock(viewer, "Tiled heatmaps")
    src = viewer.add_image(xray, name="xray")
    assert tw.run(src, tile=64, overlap=0.0, classes="all", method="gradcam") is not None and tw.busy
    qtbot.waitUntil(gated_tiling.entered.is_set, timeout=30_000)
    viewer.layers.remove(src)
    gated_tiling.release.set()
    wait(qtbot, tw)
    assert tw.last_error is None
    assert len(viewer.layers) == 0 and tw.layers_added == [] and tw.table.rowCount() == 0
    msgs = messages(clean_notifications)
    assert any("'xray' was removed" in m and "nothing was added" in m for m in msgs), msgs
    assert gated_tiling.completed == 0  # the run stopped at the next step instead of finishing for nothing
    assert_idle(tw, mw.state.bundle)
    # napari is still up and the widget works: a new image gets its maps
    other = viewer.add_image(xray, name="xray2")
    tw.run(other)
    wait(qtbot, tw)
    assert tw.last_error is None and [lyr.metadata["target"] for lyr in tiled(viewer)] == CLASSES
    assert all(lyr.metadata["source"] == "xray2" for lyr in tiled(viewer))
    assert_idle(tw, mw.state.bundle)


def test_source_replaced_by_same_name_while_tiling(make_napari_viewer, qtbot, model_file, xray, gated_tiling,
                                                   clean_notifications):
    """Deleted and re-added under the same name: the maps of the old image do not land on the new one."""
    viewer = make_napari_viewer()
    mw = load(qtbot, viewer, model_file)
    tw = dock(viewer, "Tiled heatmaps")
    src = viewer.add_image(xray, name="xray")
    tw.run(src, tile=64, overlap=0.0, classes="all", method="cam")
    qtbot.waitUntil(gated_tiling.entered.is_set, timeout=30_000)
    viewer.layers.remove(src)
    viewer.add_image(np.zeros((40, 40), np.uint8), name="xray")
    gated_tiling.release.set()
    wait(qtbot, tw)
    assert [lyr.name for lyr in viewer.layers] == ["xray"] and tiled(viewer) == []
    assert any("'xray' was removed" in m for m in messages(clean_notifications))
    assert_idle(tw, mw.state.bundle)


def test_two_tiled_runs_at_once(make_napari_viewer, qtbot, model_file, xray, gated_tiling, clean_notifications):
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer()
    mw = load(qtbot, viewer, model_file)
    tw = dock(viewer, "Tiled heatmaps")
    src = viewer.add_image(xray, name="xray")
    tw.image.value, tw.tile.value, tw.overlap.value, tw.class_mode.value = src, 64, 0.0, "all"
    tw.method.value = "gradcam"
    for _ in range(2):  # a double click: two clicks before the event loop runs again
        qtbot.mouseClick(tw.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(gated_tiling.entered.is_set, timeout=30_000)
    first = tw.worker
    assert first is not None and tw.busy and not tw.run_button.isEnabled() and tw.cancel_button.isEnabled()
    tw.run_button.click()  # disabled: nothing happens
    # a second run asked for from code is refused, and leaves the form (the running job's settings) alone
    assert tw.run(src, classes=["covid"], tile=32) is None
    assert tw.worker is first and tw.class_mode.value == "all" and tw.tile.value == 64
    assert any("still running" in m for m in messages(clean_notifications))
    gated_tiling.release.set()
    wait(qtbot, tw)
    assert len(gated_tiling.bundles) == 1  # one computation
    assert tw.last_error is None and [lyr.metadata["target"] for lyr in tiled(viewer)] == CLASSES
    assert_idle(tw, mw.state.bundle)
    # a run afterwards replaces the set: never two sets
    tw.run(src, classes=["covid"])
    wait(qtbot, tw)
    assert [lyr.metadata["target"] for lyr in tiled(viewer)] == ["covid"]
    assert_idle(tw, mw.state.bundle)


def test_model_switched_mid_tiling(make_napari_viewer, qtbot, model_file, other_model_file, xray, gated_tiling,
                                   clean_notifications):
    viewer = make_napari_viewer()
    mw = load(qtbot, viewer, model_file)
    old, old_name = mw.state.bundle, mw.state.name
    tw = dock(viewer, "Tiled heatmaps")
    src = viewer.add_image(xray, name="xray")
    tw.run(src, tile=64, overlap=0.0, classes=["pneumonia", "covid"], method="gradcam")
    qtbot.waitUntil(gated_tiling.entered.is_set, timeout=30_000)
    mw.load_file(other_model_file)  # finishes while the tiled run waits at the gate
    wait(qtbot, mw)
    new = mw.state.bundle
    assert new is not old and new.classes == ["cat", "dog"]
    gated_tiling.release.set()
    wait(qtbot, tw)
    assert tw.last_error is None
    # computed by the model of the run's start, and labelled with it
    assert gated_tiling.bundles == [old]
    layers = tiled(viewer)
    assert [lyr.metadata["target"] for lyr in layers] == ["pneumonia", "covid"]
    assert all(lyr.metadata["model"] == old_name and "tiny" in old_name for lyr in layers)
    assert "covid" in tw.result_label.text() or tw.table.rowCount() == 2
    # the form now follows the new model, and the next run uses it
    assert list(tw.chosen.choices) == ["cat", "dog"] and tw.k.max == 2
    assert_idle(tw, old, new)
    tw.run(src, classes="all")
    wait(qtbot, tw)
    assert tw.last_error is None and gated_tiling.bundles[-1] is new
    layers = tiled(viewer)
    assert [lyr.metadata["target"] for lyr in layers] == ["cat", "dog"]
    assert all("other" in lyr.metadata["model"] for lyr in layers)
    assert_idle(tw, old, new)


def test_tiled_cancelled_mid_run(make_napari_viewer, qtbot, model_file, xray, gated_tiling, clean_notifications):
    viewer = make_napari_viewer()
    mw = load(qtbot, viewer, model_file)
    tw = dock(viewer, "Tiled heatmaps")
    src = viewer.add_image(xray, name="xray")
    gated_tiling.release.set()
    tw.run(src, tile=64, overlap=0.0, classes=["normal", "covid"], method="cam")
    wait(qtbot, tw)
    before = tiled(viewer)
    assert [lyr.metadata["target"] for lyr in before] == ["normal", "covid"]
    gated_tiling.release.clear()
    gated_tiling.entered.clear()
    tw.run(src, classes="all", method="gradcam", keep=False)  # would replace the two maps by three
    qtbot.waitUntil(gated_tiling.entered.is_set, timeout=30_000)
    assert tw.cancel_button.isEnabled()
    tw.cancel_button.click()
    assert not tw.cancel_button.isEnabled()  # at once, while the worker still waits
    gated_tiling.release.set()
    wait(qtbot, tw)
    assert any("cancelled" in m for m in messages(clean_notifications))
    assert tw.last_error is None and gated_tiling.completed == 1  # the first run only
    # the previous maps are untouched: nothing removed, nothing half added
    assert tiled(viewer) == before and [lyr.name for lyr in viewer.layers][0] == "xray"
    assert_idle(tw, mw.state.bundle)
    tw.run(src, classes=["pneumonia"])
    wait(qtbot, tw)
    assert [lyr.metadata["target"] for lyr in tiled(viewer)] == ["pneumonia"]


def test_tiled_layers_failing_to_add_leave_the_previous_set(make_napari_viewer, qtbot, model_file, xray,
                                                             monkeypatch, clean_notifications):
    """A result that cannot become layers (here: a bad colormap on the 2nd class) adds none of them
    and keeps the previous maps."""
    import napari_gradcam._napari.tiled_widget as tmod

    viewer = make_napari_viewer()
    mw = load(qtbot, viewer, model_file)
    tw = dock(viewer, "Tiled heatmaps")
    src = viewer.add_image(xray, name="xray")
    tw.run(src, tile=64, overlap=0.0, classes=["covid"], method="cam")
    wait(qtbot, tw)
    before = tiled(viewer)
    real = tmod.tiled_layers

    def broken(*args, **kwargs):
        tuples = real(*args, **kwargs)
        tuples[1][1]["colormap"] = "no such colormap"
        return tuples

    monkeypatch.setattr(tmod, "tiled_layers", broken)
    tw.run(src, classes="all")
    wait(qtbot, tw)
    assert tw.last_error and "Tiled heatmaps failed" in tw.last_error
    assert any("Tiled heatmaps failed" in m for m in messages(clean_notifications))
    assert tiled(viewer) == before and len(viewer.layers) == 2
    assert_idle(tw, mw.state.bundle)


def test_failed_tiled_run_forgets_its_source(make_napari_viewer, qtbot, model_file, xray, monkeypatch,
                                            clean_notifications):
    """A run whose core fails leaves no reference to its source layer (nor a busy widget) behind."""
    import napari_gradcam.engine as ex

    def failing(*args, **kwargs):
        yield 0, 1
        raise RuntimeError("boom")

    monkeypatch.setattr(ex, "iter_tiled_heatmaps", failing)
    viewer = make_napari_viewer()
    mw = load(qtbot, viewer, model_file)
    tw = dock(viewer, "Tiled heatmaps")
    src = viewer.add_image(xray, name="xray")
    tw.run(src, tile=64, overlap=0.0, classes="all")
    wait(qtbot, tw)
    assert tw.last_error and "Tiled heatmaps failed (RuntimeError: boom)" in tw.last_error
    assert tw.jobs.job is None and tw.worker is None and tiled(viewer) == []  # the runner let go of the job
    assert_idle(tw, mw.state.bundle)


def test_source_layer_deleted_while_computing_features(make_napari_viewer, qtbot, model_file, xray, gated_features,
                                                       clean_notifications):
    viewer = make_napari_viewer()
    mw = load(qtbot, viewer, model_file)
    fw = dock(viewer, "Feature maps")
    src = viewer.add_image(xray, name="xray")
    assert fw.run(src, model_layer="features.block2", n=4) is not None
    qtbot.waitUntil(gated_features.entered.is_set, timeout=30_000)
    assert not fw.run_button.isEnabled()
    assert fw.run(src) is None and any("still running" in m for m in messages(clean_notifications))
    viewer.layers.remove(src)
    gated_features.release.set()
    wait(qtbot, fw)
    assert fw.last_error is None and len(viewer.layers) == 0 and fw.layers_added == []
    msgs = messages(clean_notifications)
    assert any("'xray' was removed" in m and "nothing was added" in m for m in msgs), msgs
    assert_idle(fw, mw.state.bundle)
    other = viewer.add_image(xray, name="xray2")
    fw.run(other)
    wait(qtbot, fw)
    assert fw.last_error is None
    assert [lyr.name for lyr in viewer.layers] == ["xray2", "features @features.block2 [xray2]"]
    assert_idle(fw, mw.state.bundle)


def test_model_switched_before_features_start(make_napari_viewer, qtbot, model_file, other_model_file, xray,
                                              gated_features, clean_notifications):
    """The model is switched while the job waits for the model lock: the maps are still the old model's."""
    viewer = make_napari_viewer()
    mw = load(qtbot, viewer, model_file)
    old, old_name = mw.state.bundle, mw.state.name
    fw = dock(viewer, "Feature maps")
    src = viewer.add_image(xray, name="xray")
    gated_features.release.set()
    with mw.state.lock:  # another job holds the model: the features job waits for it
        fw.run(src, model_layer="features.block2", n=4)
        mw.load_file(other_model_file)
        wait(qtbot, mw)
        assert mw.state.bundle is not old and fw.busy
    wait(qtbot, fw)
    assert fw.last_error is None and gated_features.bundles == [old]
    layer = viewer.layers[-1]
    assert layer.metadata["model"] == old_name and layer.metadata["layer"] == "features.block2"
    assert_idle(fw, old, mw.state.bundle)


# ----------------------------------------------------------------------------- explain, like the tiled maps
@pytest.fixture
def gated_explain(monkeypatch):
    """explain waits at a gate before computing."""
    gate = _gate_call(monkeypatch, "explain")
    yield gate
    gate.release.set()


def test_source_replaced_by_same_name_while_explaining(make_napari_viewer, qtbot, model_file, xray, gated_explain,
                                                       clean_notifications):
    """Deleted and re-added under the same name: the heatmap of the old image does not land on the new one."""
    viewer = make_napari_viewer()
    mw = load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    src = viewer.add_image(xray, name="xray")
    ew.run(src, method="gradcam", target="pneumonia")
    qtbot.waitUntil(gated_explain.entered.is_set, timeout=30_000)
    viewer.layers.remove(src)
    viewer.add_image(np.zeros((40, 40), np.uint8), name="xray")
    gated_explain.release.set()
    wait(qtbot, ew)
    assert ew.last_error is None
    assert [lyr.name for lyr in viewer.layers] == ["xray"] and heatmap_layers(viewer) == [] and ew.layers_added == []
    assert any("'xray' was removed" in m and "no heatmap" in m for m in messages(clean_notifications))
    assert_idle(ew, mw.state.bundle)


def test_explain_layers_failing_to_add_leave_the_previous_set(make_napari_viewer, qtbot, model_file, xray,
                                                              monkeypatch, clean_notifications):
    """A result that cannot become layers (here: a bad colormap for the 2nd class of "all classes") adds
    none of them and keeps the previous heatmap."""
    import napari_gradcam._napari.explain_widget as emod

    viewer = make_napari_viewer()
    mw = load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    src = viewer.add_image(xray, name="xray")
    ew.run(src, method="gradcam", target="covid")
    wait(qtbot, ew)
    before = heatmap_layers(viewer)
    assert [lyr.metadata["target"] for lyr in before] == ["covid"]
    monkeypatch.setattr(emod, "CLASS_COLORMAPS", ("green", "no such colormap"))
    ew.run(src, target="all")
    wait(qtbot, ew)
    assert ew.last_error and "Explaining failed" in ew.last_error
    assert any("Explaining failed" in m for m in messages(clean_notifications))
    assert heatmap_layers(viewer) == before and [lyr.name for lyr in viewer.layers][0] == "xray"
    assert len(viewer.layers) == 2 and ew.layers_added == []
    assert_idle(ew, mw.state.bundle)
    monkeypatch.undo()  # and the next run works
    ew.run(src, target="all")
    wait(qtbot, ew)
    assert ew.last_error is None and [lyr.metadata["target"] for lyr in heatmap_layers(viewer)] == CLASSES


def test_finished_runs_let_go_of_the_worker(make_napari_viewer, qtbot, model_file, xray, clean_notifications):
    """After each run the widget no longer holds its worker, whose arguments include the image."""
    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    ew = dock(viewer, "Explain (Grad-CAM)")
    src = viewer.add_image(xray, name="xray")
    assert ew.run(src, method="gradcam", target="pneumonia") is not None
    assert ew.worker is not None
    wait(qtbot, ew)
    assert ew.worker is None and ew.last_error is None and len(heatmap_layers(viewer)) == 1
    assert ew.run(src, method="gradcam", target_layer="features.block1.bn1", target="pneumonia") is not None
    wait(qtbot, ew)
    assert ew.worker is None

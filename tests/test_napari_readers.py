"""The npe2 readers with real viewers: DICOM files and folders become layers with spacing and safe
metadata; model files dropped on the viewer load into the Model widget and add no layer;
``napari_gradcam.use_model`` hands any bundle to the viewer."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
pytest.importorskip("pydicom")

import torchvision  # noqa: E402,F401  - before any viewer: see _napari/_compat.py
from dicom_helpers import IDENTIFYING, bright_square, write_dicom, write_unreadable_compressed  # noqa: E402
from napari_helpers import PLUGIN  # noqa: E402

import napari_gradcam as ng  # noqa: E402
from napari_gradcam._napari.readers import get_dicom_reader, get_model_reader  # noqa: E402
from napari_gradcam._napari.state import get_state  # noqa: E402
from napari_gradcam.errors import GradCamError  # noqa: E402

CLASSES = ["normal", "pneumonia"]


def _docked_model(viewer):
    """The Model tab of the plugin's docked panel (where a dropped model goes), or None."""
    from napari_gradcam._napari.panel import PANEL

    dock = viewer.window._wrapped_dock_widgets.get(f"{PANEL} ({PLUGIN})")
    if dock is None:
        return None
    panel = dock.inner_widget()
    assert panel.tabs.currentWidget() is panel.widgets["model"]  # shown at the Model tab
    return panel.widgets["model"]


# ----------------------------------------------------------------------------- DICOM
def test_a_dicom_file_opens_as_a_windowed_layer_with_spacing(make_napari_viewer, tmp_path):
    path = write_dicom(tmp_path / "chest.dcm", bright_square(), bits_stored=12, photometric="MONOCHROME1",
                       window=(1500, 2000), spacing=(0.2, 0.15))
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)
    assert len(layers) == 1 and layers[0].name == "chest"
    layer = layers[0]
    assert layer.data.dtype == np.float32 and layer.data.shape == (48, 64)
    assert layer.data[10, 10] < layer.data[40, 50]  # MONOCHROME1: the high stored square is dark
    np.testing.assert_allclose(layer.scale, [0.2, 0.15])
    assert tuple(layer.contrast_limits) == (0.0, 1.0) and layer.colormap.name == "gray"
    meta = layer.metadata
    assert meta["window"]["center"] == 1500.0 and meta["inverted"] is True and meta["file"] == "chest.dcm"
    text = json.dumps(meta)
    assert not any(v in text for v in IDENTIFYING.values())


def test_a_dicom_folder_is_one_stack_or_one_layer_per_file(make_napari_viewer, tmp_path):
    same = tmp_path / "series"
    same.mkdir()
    for k in range(3):
        img = bright_square()
        img[40, k] = 4000  # a marker that tells the slices apart
        write_dicom(same / f"1.3.6.1.4.{k}", img, bits_stored=12, spacing=(0.5, 0.4))  # UID names, no suffix
    (same / "readme.txt").write_text("not an image")
    viewer = make_napari_viewer()
    layers = viewer.open(same, plugin=PLUGIN)
    assert len(layers) == 1 and layers[0].data.shape == (3, 48, 64)
    np.testing.assert_allclose(layers[0].scale, [1.0, 0.5, 0.4])
    assert [int(np.argmax(layers[0].data[k, 40, :3])) for k in range(3)] == [0, 1, 2]  # in file order
    assert layers[0].metadata["files"] == ["1.3.6.1.4.0", "1.3.6.1.4.1", "1.3.6.1.4.2"]

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_dicom(mixed / "a.dcm", bright_square(), bits_stored=12)
    write_dicom(mixed / "b.dcm", bright_square((32, 32)), bits_stored=12)
    layers = viewer.open(mixed, plugin=PLUGIN)
    assert [lay.data.shape for lay in layers] == [(48, 64), (32, 32)]

    frames = np.stack([bright_square(), bright_square()[::-1]])
    layers = viewer.open(write_dicom(tmp_path / "cine.dcm", frames, bits_stored=12, spacing=(0.3, 0.3)),
                         plugin=PLUGIN)
    assert layers[0].data.shape == (2, 48, 64) and layers[0].data[1, -10, 10] == 1.0
    np.testing.assert_allclose(layers[0].scale, [1.0, 0.3, 0.3])


def test_dicom_reader_declines_and_reports(make_napari_viewer, tmp_path):
    (tmp_path / "empty").mkdir()
    assert get_dicom_reader(str(tmp_path / "empty")) is None
    assert get_dicom_reader(str(tmp_path / "picture.png")) is None
    bad = write_unreadable_compressed(tmp_path / "lossless.dcm")
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="python-gdcm"):  # napari wraps the reader's one sentence
        viewer.open(bad, plugin=PLUGIN)
    assert len(viewer.layers) == 0


# ----------------------------------------------------------------------------- model files
@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    bundle = ng.build_model("simple_cnn", CLASSES, in_channels=1, input_size=32, device="cpu")
    ng.save_model(bundle, root / "tiny.safetensors")
    torch.save(bundle.model.state_dict(), root / "weights.pt")
    (root / "notes.pt").write_text("these are my notes, not a model")
    (root / "fake.safetensors").write_bytes(b"\x00" * 64)
    (root / "fake.onnx").write_text("<html>not onnx</html>")
    return root


def _drop(viewer, path) -> None:
    """Drop ``path`` on the viewer's canvas as a file manager would."""
    from qtpy.QtCore import QMimeData, QPointF, Qt, QUrl
    from qtpy.QtGui import QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    viewer.window._qt_viewer.dropEvent(event)


def test_dropping_a_model_bundle_loads_it_and_adds_no_layer(make_napari_viewer, model_files):
    viewer = make_napari_viewer()
    _drop(viewer, model_files / "tiny.safetensors")
    assert len(viewer.layers) == 0
    state = get_state(viewer)
    assert state.bundle is not None and state.bundle.classes == CLASSES
    assert state.source == str(model_files / "tiny.safetensors")
    widget = _docked_model(viewer)
    assert widget is not None and "simple_cnn" in widget.info.text()
    first = state.bundle
    assert viewer.open(model_files / "tiny.safetensors", plugin=PLUGIN) == []  # the same through viewer.open
    assert state.bundle is not first and state.bundle.classes == CLASSES and len(viewer.layers) == 0


def test_a_model_file_without_its_description_opens_the_form(make_napari_viewer, model_files, monkeypatch):
    shown = []
    from napari.utils import notifications

    monkeypatch.setattr(notifications, "show_error", lambda msg: shown.append(msg))
    viewer = make_napari_viewer()
    added = viewer.open(model_files / "weights.pt", plugin=PLUGIN)
    assert added == [] and len(viewer.layers) == 0
    assert len(shown) == 1 and "weights.pt" in shown[0] and "\n" not in shown[0]
    assert get_state(viewer).bundle is None
    widget = _docked_model(viewer)
    assert str(widget.file.value) == str(model_files / "weights.pt")  # filled in, waiting for the details


@pytest.mark.parametrize("name", ["notes.pt", "fake.safetensors", "fake.onnx"])
def test_files_that_are_not_models_are_declined(make_napari_viewer, model_files, name):
    assert get_model_reader(str(model_files / name)) is None
    viewer = make_napari_viewer()
    with pytest.raises(ValueError, match="refused the file"):
        viewer.open(model_files / name, plugin=PLUGIN)
    assert get_state(viewer).bundle is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the classic ONNX exporter
def test_model_headers_are_recognised(model_files, tmp_path):
    import torch

    assert get_model_reader(str(model_files / "tiny.safetensors")) is not None
    assert get_model_reader(str(model_files / "weights.pt")) is not None
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    assert get_model_reader(str(legacy)) is not None
    hand_made = tmp_path / "hand.onnx"  # ir_version 8, then producer_name "x" (field 2)
    hand_made.write_bytes(b"\x08\x08\x12\x01x\x3a\x00")
    assert get_model_reader(str(hand_made)) is not None
    if importlib.util.find_spec("onnx") is not None:  # a real export (the exporter needs the onnx package)
        onnx_path = tmp_path / "m.onnx"
        torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(onnx_path), dynamo=False)
        assert get_model_reader(str(onnx_path)) is not None
    assert get_model_reader([str(model_files / "tiny.safetensors")] * 2) is None  # a stack is not a model


# ----------------------------------------------------------------------------- use_model
def test_use_model_hands_a_bundle_to_the_viewer(make_napari_viewer, tiny_bundle, tiny_bundle_rgb):
    viewer = make_napari_viewer()
    assert ng.use_model(viewer, tiny_bundle) is tiny_bundle
    state = get_state(viewer)
    assert state.bundle is tiny_bundle and state.source == "set from Python"
    widget = _docked_model(viewer)
    assert "simple_cnn" in widget.info.text() and "1 channel" in widget.info.text()
    # a second model: the same dock, now showing it; other widgets see it too
    explain = viewer.window.add_plugin_dock_widget(PLUGIN, "Classify")[1]
    ng.use_model(viewer, tiny_bundle_rgb, source="my notebook")
    assert explain.state.bundle is tiny_bundle_rgb and state.source == "my notebook"
    assert "3 channels" in widget.info.text()
    from napari_gradcam._napari.panel import PANEL

    assert len([k for k in viewer.window._wrapped_dock_widgets if k.startswith(PANEL)]) == 1  # the same dock


def test_use_model_refuses_what_is_not_a_model(make_napari_viewer):
    import torch

    viewer = make_napari_viewer()
    with pytest.raises(GradCamError, match="wrap_model"):
        ng.use_model(viewer, torch.nn.Linear(2, 2))
    with pytest.raises(GradCamError, match="needs a ModelBundle"):
        ng.use_model(viewer, 42)
    assert get_state(viewer).bundle is None


# ----------------------------------------------------------------------------- the whole flow
def test_a_dropped_model_explains_an_opened_dicom_in_millimetres(make_napari_viewer, qtbot, model_files, tmp_path):
    from napari_helpers import dock, wait

    from napari_gradcam.data import read_image

    path = write_dicom(tmp_path / "cxr.dcm", bright_square(), bits_stored=12, photometric="MONOCHROME1",
                       window=(1500, 3000), spacing=(0.2, 0.15))
    viewer = make_napari_viewer()
    _drop(viewer, model_files / "tiny.safetensors")
    (src,) = viewer.open(path, plugin=PLUGIN)
    ew = dock(viewer, "Explain (Grad-CAM)")
    ew.run(src, method="gradcam", target="pneumonia")
    wait(qtbot, ew)
    assert ew.last_error is None
    heat = viewer.layers[-1]
    # lies on the radiograph, in mm: the (coarse) map spans the image's extent
    np.testing.assert_allclose(np.multiply(heat.data.shape, heat.scale), np.multiply(src.data.shape, [0.2, 0.15]))
    expected = ng.explain(get_state(viewer).bundle, read_image(path), method="gradcam", target="pneumonia")
    from napari_gradcam._napari.layers import coarse_map

    np.testing.assert_allclose(heat.data, coarse_map(expected), atol=1e-5)  # the layer and the CLI read alike

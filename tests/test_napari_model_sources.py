"""The Model widget with models from anywhere: every torchvision name (searchable), a bare state dict
whose channels come from the weights (with a note on the normalisation), and an ONNX file."""

from __future__ import annotations

import pytest
import torch
import torchvision

from napari_helpers import dock, wait

pytest.importorskip("napari")


@pytest.fixture
def notes():
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    yield lambda: [n.message for n in notification_manager.records]
    notification_manager.records.clear()


def test_model_widget_lists_searches_and_builds_any_torchvision_model(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    mw = dock(viewer, "Model")
    choices = list(mw.architecture.choices)
    assert choices[0] == "simple_cnn" and {"convnext_tiny", "swin_t", "vit_b_16", "regnet_y_400mf"} <= set(choices)
    from napari_gradcam.models import list_architectures

    registered = list_architectures()
    assert choices[: len(registered)] == registered  # the registered nine, then common ones, then the rest
    assert choices.index("convnext_tiny") < choices.index("vgg11")
    completer = mw.architecture.native.completer()
    completer.setCompletionPrefix("next_t")  # a match anywhere in the name
    found = [completer.completionModel().index(i, 0).data() for i in range(completer.completionCount())]
    assert "convnext_tiny" in found and "resnext50_32x4d" not in found
    mw.build("shufflenet_v2_x0_5", ["cat", "dog"], input_size=64)
    wait(qtbot, mw)
    b = mw.state.bundle
    assert b is not None and b.architecture == "torchvision:shufflenet_v2_x0_5", mw.last_error
    assert mw.architecture.value == "shufflenet_v2_x0_5" and "conv5" in mw.target_layer.choices


def test_bare_state_dict_needs_no_channels_by_hand(make_napari_viewer, qtbot, tmp_path, notes):
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), tmp_path / "r18.pt")
    viewer = make_napari_viewer()
    mw = dock(viewer, "Model")
    assert mw.in_channels.value == "auto"
    mw.architecture.value = "resnet18"
    mw.classes.value = "NORMAL, PNEUMONIA"
    mw.input_size.value = 64
    mw.load_file(tmp_path / "r18.pt")
    wait(qtbot, mw)
    b = mw.state.bundle
    assert b is not None and b.in_channels == 3, mw.last_error  # read from the weights
    assert b.config.mean == [0.485, 0.456, 0.406]
    assert any("r18.pt" in m and "ImageNet" in m for m in notes())

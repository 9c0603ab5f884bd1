"""Forms declared once (issue 21, point 4): parameters carry their controls; runs take overrides, never the
form's controls (run under ``xvfb-run -a``)."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import torchvision  # noqa: E402,F401  - before any viewer: see _napari/_compat.py

from napari_helpers import dock, load, wait, save_tiny_model  # noqa: E402

CLASSES = ["normal", "pneumonia", "covid"]
DECLARED = {"Classify": "every_slice", "Explain (Grad-CAM)": "method", "Compare methods": "methods",
            "Feature maps": "count", "Heatmap vs outline": "tolerance", "Tiled heatmaps": "chosen"}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained simple_cnn (3 classes, 32 px) saved as a bundle."""
    return save_tiny_model(tmp_path_factory, CLASSES, 32)


def test_param_declares_a_control_and_build_form_binds_it():
    from dataclasses import dataclass

    from psygnal import evented

    from napari_gradcam._napari.form import build_form, param

    @evented
    @dataclass
    class P:
        size: int = param(4, "size", "How big.", min=1, max=9)
        mode: str = param("b", "mode", "Which one.", choices=[("A", "a"), ("B", "b")])
        on: bool = param(True, "switched on")
        plain: str = "not in the form"

    p = P()
    form, controls = build_form(p)
    assert list(controls) == ["size", "mode", "on"]  # declared order; an undeclared field has no control
    assert controls["size"].label == "size" and controls["size"].max == 9 and controls["size"].value == 4
    assert controls["size"].native.toolTip() == "How big."
    assert controls["mode"].value == "b" and controls["on"].text == "switched on"
    controls["size"].value = 7  # form -> parameters
    assert p.size == 7
    p.mode = "a"  # parameters -> form
    assert controls["mode"].value == "a"


@pytest.mark.parametrize("name", list(DECLARED))
def test_every_widget_form_comes_from_its_parameters(make_napari_viewer, name):
    from napari_gradcam._napari.form import form_fields

    viewer = make_napari_viewer()
    widget = dock(viewer, name)
    declared = [f.name for f in form_fields(widget.params)]
    assert DECLARED[name] in declared
    shown = {getattr(w, "name", None) or w.label for w in widget.form}
    for f in form_fields(widget.params):
        meta = f.metadata["form"]
        control = next(w for w in widget.form if (getattr(w, "label", None) == meta["label"]
                                                 or getattr(w, "text", None) == meta["label"]))
        assert control.value == (list(getattr(widget.params, f.name)) if isinstance(control.value, list)
                                 else getattr(widget.params, f.name)), (name, f.name)
    assert shown


def test_runs_set_their_arguments_in_the_form_and_work_on_a_copy(make_napari_viewer, qtbot, model_file):
    from napari_gradcam.phantoms import make_xray

    viewer = make_napari_viewer()
    load(qtbot, viewer, model_file)
    src = viewer.add_image(make_xray("pneumonia", size=48, seed=3).image, name="xray")
    fw = dock(viewer, "Feature maps")
    fw.run(src, n=4, display="grid")
    assert fw.count.value == 4 and fw.params.count == 4 and fw.display.value == "grid"  # the form shows what runs
    fw.count.value = 9  # an edit while it runs does not reach the run
    wait(qtbot, fw)
    assert fw.last_error is None
    assert len(fw.layers_added[0].metadata["channels"]) == 4
    ew = dock(viewer, "Explain (Grad-CAM)")
    ew.run(src, method="layercam-fine", target="pneumonia")
    assert ew.method.value == "layercam-fine" and ew.layer.value == "fine"  # the method's own layer preset
    wait(qtbot, ew)
    heat = ew.layers_added[0]
    assert heat.metadata["method"] == "layercam-fine" and heat.metadata["target"] == "pneumonia"
    ew.run(src, method="gradcam")  # leaves the preset for the model's layer, as choosing it in the form does
    assert ew.layer.value == ew.state.target_layer
    wait(qtbot, ew)
    assert ew.layers_added[0].metadata["layer"] == ew.state.target_layer
    assert [f.name for f in fields(ew.params)] == ["method", "target", "scale", "layer", "shifts", "keep"]
    np.testing.assert_array_less(-1e-6, heat.data)  # a CAM-family map in [0, 1]


#: the tabs whose form is not declared by a parameters dataclass (issue 21, point 4: none left)
NOT_DECLARED: set = set()


def test_every_tab_declares_its_parameters_in_one_dataclass_with_labelled_fields(make_napari_viewer):
    """A new widget parameter touches one file: each tab's ``params`` is a dataclass whose form fields carry
    a label (and the tooltip, choices and limits) from which its form is built."""
    from dataclasses import is_dataclass

    from napari_gradcam._napari.form import FORM_KEY, form_fields
    from napari_gradcam._napari.panel import tab_classes

    viewer = make_napari_viewer()
    undeclared = set()
    for title, cls in tab_classes():
        widget = cls(viewer)
        params = getattr(widget, "params", None)
        if params is None or not form_fields(params):
            undeclared.add(title)
            continue
        assert is_dataclass(params), title
        controls = [*widget.form, *getattr(widget, "run_form", ())]  # the Model tab has two forms
        for f in form_fields(params):
            meta = f.metadata[FORM_KEY]
            assert isinstance(meta["label"], str) and meta["label"].strip(), (title, f.name)
            assert any(meta["label"] in (getattr(c, "label", None), getattr(c, "text", None)) for c in controls), (
                title, f.name)
    assert undeclared == NOT_DECLARED

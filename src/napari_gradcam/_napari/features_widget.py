"""Feature maps widget: the most active channels of a layer, as a stack (slider) or a grid."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QLabel, QPushButton

from ._base import GradCamWidget, ImageLayerPicker
from .layers import feature_layers, replace_plugin_layers

if TYPE_CHECKING:  # pragma: no cover
    import napari

DISPLAYS = [("stack (slider)", "stack"), ("grid", "grid")]


def _features(state, data, layer: str | None, n: int, bundle=None):
    from ..engine import feature_maps

    with state.lock:  # ``bundle``: the model when the run started (a model switched meanwhile is not used)
        return feature_maps(bundle if bundle is not None else state.bundle, data, layer=layer, n=n)


class FeatureMapsWidget(GradCamWidget):
    """Show what a layer of the shared model responds to in an image."""

    what = "Computing feature maps"

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer)
        from magicgui.widgets import CheckBox, ComboBox, Container, SpinBox

        lay = self.layout()
        self.image = ImageLayerPicker(self.viewer)
        self.layer = ComboBox(label="layer", choices=self._layer_choices)
        self.count = SpinBox(label="channels", min=1, max=512, value=16)
        self.count.native.setToolTip("How many of the most active channels (highest mean activation) to show.")
        self.display = ComboBox(label="display", choices=DISPLAYS, value="stack")
        self.keep = CheckBox(text="keep previous feature maps", value=False)
        form = Container(widgets=[self.image.combo, self.layer, self.count, self.display, self.keep], labels=True)
        form.native.layout().setContentsMargins(0, 0, 0, 0)
        lay.addWidget(form.native)
        self.run_button = QPushButton("Show feature maps")
        self.run_button.clicked.connect(lambda: self.run())
        lay.addWidget(self.run_button)
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        lay.addWidget(self.result_label)
        lay.addStretch(1)
        self.layers_added: list = []
        self.state.model_changed.connect(self._on_model)
        self.state.target_layer_changed.connect(self._on_target_layer)
        self._on_model()

    def _layer_choices(self, _widget=None) -> list[str]:
        return list(self.state.layers)

    def _on_model(self, _bundle=None) -> None:
        self.layer.reset_choices()
        self._on_target_layer(self.state.target_layer)

    def _on_target_layer(self, name: str) -> None:
        if name and name in self.layer.choices:
            self.layer.value = name

    def reset_choices(self, *_args) -> None:
        self.image.reset_choices()
        self.layer.reset_choices()

    def run(self, layer=None, model_layer: str | None = None, n: int | None = None, display: str | None = None):
        """Compute and add the feature maps; returns the worker (or None).

        While a run is going on, another is refused (a notification) and the form is left as it is.
        """
        if self.refuse_if_busy():
            return None
        if model_layer is not None:
            self.layer.value = model_layer
        if n is not None:
            self.count.value = int(n)
        if display is not None:
            self.display.value = display
        picked = self.plane_to_explain(layer)
        if picked is None:
            return None
        layer, plane = picked
        grid = self.display.value == "grid"
        keep = bool(self.keep.value)
        model = self.state.name  # the model of the run's start: it computes the maps, and labels them
        shape = tuple(plane.data.shape[:2])
        return self.start(_features, self.state, plane.data, self.layer.value or None, int(self.count.value),
                          self.state.bundle,
                          on_returned=lambda fm: self._add(fm, plane, layer, shape, grid, keep, model))

    def _add(self, fm, plane, layer, shape, grid: bool, keep: bool, model: str) -> None:
        self.layers_added = []
        if not self.source_still_there(
                layer, f"Layer {plane.name!r} was removed while its feature maps were computed; nothing was added."):
            return
        tuples = feature_layers(fm, plane, shape, grid=grid, model=model)
        self.layers_added = replace_plugin_layers(self.viewer, tuples, "features", plane.name, keep)
        self.viewer.layers.selection.active = layer
        n, h, w = fm.maps.shape
        self.result_label.setText(f"{n} channels of {fm.layer} ({h} x {w}), most active first: "
                                  + ", ".join(str(int(c)) for c in fm.channels[:8]) + ("…" if n > 8 else ""))

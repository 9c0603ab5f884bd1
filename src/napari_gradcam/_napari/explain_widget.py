"""Explain widget: CAM / Grad-CAM / Grad-CAM++ heatmaps as Image layers over the source image."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from ._base import GradCamWidget, ImageLayerPicker
from ..engine.methods import method_title
from .layers import CLASS_COLORMAPS, heatmap_layer, replace_plugin_layers

if TYPE_CHECKING:  # pragma: no cover
    import napari

def _method_choices(_widget=None) -> list[tuple[str, str]]:
    from ..engine.methods import list_methods

    return [(m["title"], m["name"]) for m in list_methods()]

PREDICTED = "predicted class"
ALL = "all classes"


def _explain(state, data, method: str, target, layer: str | None, bundle=None, shifts: int = 1):
    from ..engine import explain

    with state.lock:  # ``bundle``: the model when the run started (a model switched mid-run is not used)
        bundle = bundle if bundle is not None else state.bundle
        result = explain(bundle, data, method=method, target=target, layer=layer, shifts=shifts)
    return result if isinstance(result, list) else [result]


class ExplainWidget(GradCamWidget):
    """Explain the shared model's decision on an image layer as heatmap layers."""

    what = "Explaining"

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer)
        from magicgui.widgets import CheckBox, ComboBox, Container, SpinBox

        lay = self.layout()
        self.image = ImageLayerPicker(self.viewer)
        self.method = ComboBox(label="method", choices=_method_choices, value="gradcam")
        self.method.native.setToolTip("Grad-CAM works at any convolutional layer; CAM needs a global-average-"
                                      "pooling head and uses the layer feeding it. Pixel attributions (saliency, "
                                      "integrated gradients, ...) work on the input; signed ones show blue (against) "
                                      "and red (for the class).")
        self.target = ComboBox(label="target", choices=self._target_choices)
        self.target.native.setToolTip("The class to explain: the predicted one, any class, or all classes.")
        self.layer = ComboBox(label="layer", choices=self._layer_choices)
        self.layer.native.setToolTip("The layer whose activations are weighted (default: the Model widget's).")
        self.shifts = SpinBox(label="sub-cell shifts", min=1, max=8, value=1)
        self.shifts.native.setToolTip("k > 1: average the maps of k x k copies of the image shifted by fractions "
                                      "of a heatmap cell, for a k times finer map (k*k passes). 1 = off.")
        self.keep = CheckBox(text="keep previous heatmaps", value=False)
        form = Container(widgets=[self.image.combo, self.method, self.target, self.layer, self.shifts, self.keep],
                         labels=True)
        form.native.layout().setContentsMargins(0, 0, 0, 0)
        lay.addWidget(form.native)

        row = QWidget()
        rlay = QHBoxLayout(row)
        rlay.setContentsMargins(0, 0, 0, 0)
        self.run_button = QPushButton("Explain")
        self.run_button.clicked.connect(lambda: self.run())
        self.side_button = QPushButton("Side by side")
        self.side_button.setCheckable(True)
        self.side_button.setToolTip("Show image and heatmaps next to each other (napari's grid mode).")
        self.side_button.toggled.connect(self.side_by_side)
        self.compare_button = QPushButton("Compare methods")
        self.compare_button.setToolTip("Every method's map of this image in a grid, with deletion / insertion AUC and a "
                                       "model-randomisation sanity check in a table.")
        self.compare_button.clicked.connect(lambda: self.compare())
        rlay.addWidget(self.run_button, 2)
        rlay.addWidget(self.compare_button, 2)
        rlay.addWidget(self.side_button, 1)
        lay.addWidget(row)
        self.result_label = QLabel("")
        self.result_label.setTextFormat(Qt.TextFormat.RichText)
        self.result_label.setWordWrap(True)
        lay.addWidget(self.result_label)
        from .compare_widget import CompareTable

        self.compare_table = CompareTable()
        self.comparison = None
        self.compare_layers_added: list = []
        lay.addWidget(self.compare_table)
        lay.addStretch(1)
        self.layers_added: list = []
        self.state.model_changed.connect(self._on_model)
        self.state.target_layer_changed.connect(self._on_target_layer)
        self.grid.events.enabled.connect(self._on_grid)
        self._on_model(self.state.bundle)

    # ----------------------------------------------------------------- choices follow the model
    def _target_choices(self, _widget=None) -> list:
        bundle = self.state.bundle
        classes = bundle.classes if bundle is not None else []
        return [(PREDICTED, PREDICTED), *[(c, c) for c in classes], (ALL, ALL)]

    def _layer_choices(self, _widget=None) -> list[str]:
        return list(self.state.layers)

    def _on_model(self, _bundle=None) -> None:
        self.target.reset_choices()
        self.layer.reset_choices()
        self._on_target_layer(self.state.target_layer)

    def _on_target_layer(self, name: str) -> None:
        if name and name in self.layer.choices:
            self.layer.value = name

    @property
    def grid(self):
        """The viewer's grid settings (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before)."""
        canvas = getattr(self.viewer, "canvas", None)
        return canvas.grid if canvas is not None and hasattr(canvas, "grid") else self.viewer.grid

    def _on_grid(self, event=None) -> None:
        enabled = bool(self.grid.enabled)
        if self.side_button.isChecked() != enabled:
            self.side_button.blockSignals(True)
            self.side_button.setChecked(enabled)
            self.side_button.blockSignals(False)

    def reset_choices(self, *_args) -> None:
        self.image.reset_choices()
        self.target.reset_choices()
        self.layer.reset_choices()

    # ----------------------------------------------------------------- actions
    def side_by_side(self, enabled: bool | None = None) -> None:
        """Toggle napari's grid mode: the image and each heatmap in its own panel."""
        grid = self.grid
        enabled = not grid.enabled if enabled is None else bool(enabled)
        if enabled:
            n = len(self.viewer.layers)
            grid.shape = (1, n) if 1 < n <= 4 else (-1, -1)
            grid.stride = 1
        grid.enabled = enabled

    def run(self, layer=None, method: str | None = None, target: str | None = None, target_layer: str | None = None,
            keep: bool | None = None, shifts: int | None = None):
        """Explain ``layer`` (default: the chosen one); returns the worker (or None).

        While a run is going on, another is refused (a notification) and the form is left as it is.
        """
        if self.refuse_if_busy():
            return None
        if method is not None:
            from ..engine import canonical_method

            self.method.value = canonical_method(method)
        if target is not None:
            self.target.value = ALL if target == "all" else (PREDICTED if target == "predicted" else target)
        if target_layer is not None:
            self.layer.value = target_layer
        if keep is not None:
            self.keep.value = keep
        if shifts is not None:
            self.shifts.value = shifts
        picked = self.plane_to_explain(layer)
        if picked is None:
            return None
        layer, plane = picked
        method = self.method.value
        choice = self.target.value
        tgt = None if choice in (None, PREDICTED) else ("all" if choice == ALL else choice)
        tl = None if method == "cam" else (self.layer.value or None)
        keep = bool(self.keep.value)
        model = self.state.name
        return self.start(_explain, self.state, plane.data, method, tgt, tl, self.state.bundle,
                          int(self.shifts.value), on_returned=lambda hs: self._add(plane, layer, hs, keep, model))

    def compare(self, layer=None, methods=None):
        """Compare methods on ``layer`` (default: the chosen image): a grid of maps and a table of scores.

        ``methods`` as for :func:`napari_gradcam.compare_methods` (None: every method but the slow ones).
        Returns the worker (or None).
        """
        from .compare_widget import start_compare

        return start_compare(self, layer, methods)

    def _add(self, plane, layer, heatmaps, keep: bool, model: str) -> None:
        self.layers_added = []
        if not self.source_still_there(
                layer, f"Layer {plane.name!r} was removed while it was being explained; no heatmap was added."):
            return
        tuples = [heatmap_layer(h, plane, model) for h in heatmaps]
        if len(tuples) > 1 and not heatmaps[0].signed:  # several classes at once: give each its own hue, like the tiled maps
            for (_, kwargs, _), h in zip(tuples, heatmaps):
                kwargs["colormap"] = CLASS_COLORMAPS[h.target_index % len(CLASS_COLORMAPS)]
        self.layers_added = replace_plugin_layers(self.viewer, tuples, "explain", plane.name, keep)
        self.viewer.layers.selection.active = layer  # keep the source selected, so the next run uses it again
        h = heatmaps[0]
        how = f"{method_title(h.method)} at <tt>{h.layer}</tt>"
        if len(heatmaps) == 1:
            self.result_label.setText(f"<b>{h.target}</b> (p = {h.score:.1%}) explained by {how}")
        else:
            self.result_label.setText("; ".join(f"<b>{x.target}</b> {x.score:.1%}" for x in heatmaps) + f" — {how}")

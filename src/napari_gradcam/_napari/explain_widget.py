"""Explain widget: heatmaps of the methods of the engine's registry as Image layers over the source image."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from qtpy.QtWidgets import QPushButton

from ..engine.methods import get_method, method_title
from ._base import GradCamWidget, camera_of, layer_picker, picker_caption, wrapping_label
from .layers import CLASS_COLORMAPS, class_colormap, heatmap_layer, replace_plugin_layers
from .choices import ALL, FINE, PREDICTED, applicable_controls, method_choices, target_choices
from .params import ExplainParams, bind, snapshot

if TYPE_CHECKING:  # pragma: no cover
    import napari

SCALE_CHOICES = [("× class probability", "probability"), ("shared (raw values)", "shared"),
                 ("each to its own maximum", "each")]


def _explain(bundle, data, method: str, target, layer: str | None, shifts: int = 1):
    from ..engine import explain

    result = explain(bundle, data, method=method, target=target, layer=layer, shifts=shifts)
    return result if isinstance(result, list) else [result]


class ExplainWidget(GradCamWidget):
    """Explain the shared model's decision on an image layer as heatmap layers."""

    what = "Explaining"

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer)
        from magicgui.widgets import CheckBox, ComboBox, Container, SpinBox

        lay = self.layout()
        self.params = ExplainParams()
        self.image = layer_picker(self.viewer, "image", tooltip="The image layer to explain (the slice on screen).")
        self.method = ComboBox(label="method", choices=method_choices(), value="gradcam")
        self.method.native.setToolTip("Grad-CAM works at any convolutional layer; CAM needs a global-average-"
                                      "pooling head and uses the layer feeding it. For small findings: LayerCAM "
                                      "at the 'fine' layer preset (LayerCAM (fine)). Pixel attributions (saliency, "
                                      "integrated gradients, ...) work on the input; signed ones show blue (against) "
                                      "and red (for the class).")
        self.target = ComboBox(label="target", choices=self._target_choices)
        self.target.native.setToolTip("The class to explain: the predicted one, any class, or all classes.")
        self.scale = ComboBox(label="scale", choices=SCALE_CHOICES, value="probability")
        self.scale.native.setToolTip("How the maps of all classes share one brightness scale: times each class's "
                                     "probability (a class with p = 0 stays dark), the raw values on one scale, "
                                     "or each map to its own maximum.")
        self.layer = ComboBox(label="layer", choices=self._layer_choices)
        self.layer.native.setToolTip("The layer whose activations are weighted (default: the Model widget's); "
                                     "'fine' fuses the model's last three resolution stages.")
        self.shifts = SpinBox(label="sub-cell shifts", min=1, max=8, value=1)
        self.shifts.native.setToolTip("k > 1: average the maps of k x k copies of the image shifted by fractions "
                                      "of a heatmap cell, for a k times finer map (k*k passes). 1 = off.")
        self.keep = CheckBox(text="keep previous heatmaps", value=False)
        self.form = Container(widgets=[self.image, self.method, self.target, self.scale, self.layer, self.shifts,
                                       self.keep], labels=True)
        self.form.native.layout().setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.form.native)
        bind(self.params, {"method": self.method, "target": self.target, "scale": self.scale, "layer": self.layer,
                           "shifts": self.shifts, "keep": self.keep})
        self._layer_tip, self._shifts_tip = self.layer.native.toolTip(), self.shifts.native.toolTip()
        self.method.changed.connect(self._on_method)

        lay.insertWidget(lay.indexOf(self.form.native) + 1, picker_caption(self.image, "Explains"))
        self.run_button = QPushButton("Explain")
        self.run_button.clicked.connect(lambda: self.run())
        self.side_button = QPushButton("Side by side")
        self.side_button.setCheckable(True)
        self.side_button.setToolTip("Show image and heatmaps next to each other (napari's grid mode).")
        self.side_button.toggled.connect(self.side_by_side)
        self.add_run_row(self.run_button, self.side_button)
        self.result_label = wrapping_label(rich=True)
        lay.addWidget(self.result_label)
        lay.addStretch(1)
        self.layers_added: list = []
        self._view_before_grid = None
        self.target.changed.connect(self._on_target)
        self.state.model_changed.connect(self._on_model)
        self.state.target_layer_changed.connect(self._on_target_layer)
        self.grid.events.enabled.connect(self._on_grid)
        self._on_model(self.state.bundle)
        self._on_method(self.method.value)

    # ----------------------------------------------------------------- choices follow the model
    def _target_choices(self, _widget=None) -> list:
        return target_choices(self.state.bundle)

    def _layer_choices(self, _widget=None) -> list:
        return [FINE, *[(n, n) for n in self.state.layers]]

    def _on_method(self, name: str) -> None:
        """A method with a layer preset of its own (layercam-fine) shows it; others the model's layer.
        Controls the method ignores (the layer of a pixel attribution or of CAM, sub-cell shifts of a
        pixel attribution) are disabled, as the engine's method spec says."""
        spec = get_method(name)
        if spec.default_layers is not None:
            self.layer.value = FINE[1]
        elif self.layer.value == FINE[1]:
            self._on_target_layer(self.state.target_layer)
        uses = applicable_controls(spec)
        self.layer.enabled = uses["layer"]
        self.shifts.enabled = uses["shifts"]
        self.layer.native.setToolTip(self._layer_tip if uses["layer"] else
                                     f"{spec.title} does not use this setting ({uses['why_not_layer']}).")
        self.shifts.native.setToolTip(self._shifts_tip if uses["shifts"] else
                                      f"{spec.title} does not use this setting ({uses['why_not_shifts']}).")

    def _on_model(self, _bundle=None) -> None:
        self.target.reset_choices()
        self.layer.reset_choices()
        self._on_target_layer(self.state.target_layer)
        self._on_target()

    def _on_target_layer(self, name: str) -> None:
        if name and name in self.layer.choices:
            self.layer.value = name

    def _on_target(self, *_args) -> None:
        self.scale.visible = self.target.value == ALL  # a scale shared by several maps

    def reset_choices(self, *_args) -> None:
        self.image.reset_choices()
        self.target.reset_choices()
        self.layer.reset_choices()

    # ----------------------------------------------------------------- side by side
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

    def side_by_side(self, enabled: bool | None = None) -> None:
        """Toggle napari's grid mode (the image and each heatmap in its own panel), with every panel in view;
        leaving it brings back the view from before."""
        grid = self.grid
        enabled = not grid.enabled if enabled is None else bool(enabled)
        if enabled == bool(grid.enabled):
            return
        camera = camera_of(self.viewer)
        if enabled:
            self._view_before_grid = (tuple(camera.center), float(camera.zoom))
            n = len(self.viewer.layers)  # napari gives every layer a panel, hidden ones too
            grid.shape = (1, n) if 1 < n <= 4 else (-1, -1)
            grid.stride = 1
            grid.enabled = True
            self.viewer.reset_view()
        else:
            grid.enabled = False
            if self._view_before_grid is not None:
                camera.center, camera.zoom = self._view_before_grid
                self._view_before_grid = None
            else:
                self.viewer.reset_view()

    # ----------------------------------------------------------------- run
    def run(self, layer=None, method: str | None = None, target: str | None = None, target_layer: str | None = None,
            keep: bool | None = None, shifts: int | None = None, scale: str | None = None):
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
        for control, value in ((self.layer, target_layer), (self.keep, keep), (self.shifts, shifts),
                               (self.scale, scale)):
            if value is not None:
                control.value = value
        picked = self.plane_to_explain(layer)
        if picked is None:
            return None
        model, layer, plane = picked
        p = snapshot(self.params)
        tgt = None if p.target in (None, PREDICTED) else ("all" if p.target == ALL else p.target)
        spec = get_method(p.method)
        tl = (p.layer or None) if applicable_controls(spec)["layer"] else None
        return self.jobs.start(
            _explain, model.bundle, plane.data, p.method, tgt, tl, int(p.shifts), model=model, sources=[layer],
            removed_message=f"Layer {plane.name!r} was removed while it was being explained; no heatmap was added.",
            on_result=lambda job, heats: self._add(job, plane, layer, heats, p))

    def _add(self, job, plane, layer, heatmaps, p: ExplainParams) -> None:
        from ..engine.scaling import scale_factors

        self.layers_added = []
        scale = p.scale if len(heatmaps) > 1 else "each"
        factors = scale_factors(heatmaps, scale)
        default_layer = job.model.bundle.target_layer
        tuples = [heatmap_layer(h, plane, job.model.name, factor=float(f), scale_name=scale,
                                source_id=str(layer.unique_id), default_layer=default_layer)
                  for h, f in zip(heatmaps, factors)]
        run = uuid.uuid4().hex  # the layers of one run (the outline widget picks the newest run's best class)
        for _, kwargs, _ in tuples:
            kwargs["metadata"]["run"] = run
        if len(tuples) > 1 and not heatmaps[0].signed:  # several classes: each in its class's colour (as the CLI's overlays)
            for (_, kwargs, _), h in zip(tuples, heatmaps):
                kwargs["colormap"] = class_colormap(h.target_index, CLASS_COLORMAPS)
        self.layers_added = replace_plugin_layers(self.viewer, tuples, "explain", plane.name, p.keep, layer)
        self.viewer.layers.selection.active = layer  # keep the source selected, so the next run uses it again
        h = heatmaps[0]
        how = f"{method_title(h.method)} at <tt>{h.layer}</tt> ({job.model.name})"
        if len(heatmaps) == 1:
            self.result_label.setText(f"<b>{h.target}</b> (p = {h.score:.1%}) explained by {how}")
        else:
            self.result_label.setText("; ".join(f"<b>{x.target}</b> {x.score:.1%}" for x in heatmaps)
                                      + f" — {how}; scale: {scale}")

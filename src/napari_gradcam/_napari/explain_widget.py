"""Explain widget: heatmaps of the methods of the engine's registry as Image layers over the source image."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from qtpy.QtWidgets import QPushButton

from ..engine.methods import get_method, method_title
from ..errors import GradCamError
from ._base import FollowsTargetLayer, GradCamWidget, camera_of, layer_picker, picker_caption, wrapping_label
from .layers import CLASS_COLORMAPS, class_colormap, heatmap_layer, replace_plugin_layers
from .choices import ALL, FINE, PREDICTED, applicable_controls, method_choices, target_choices
from .form import build_form
from .params import SCALE_CHOICES, ExplainParams, adopt  # noqa: F401 - SCALE_CHOICES re-exported

if TYPE_CHECKING:  # pragma: no cover
    import napari



def _explain(bundle, data, method: str, target, layer: str | None, shifts: int = 1):
    from ..engine import explain

    result = explain(bundle, data, method=method, target=target, layer=layer, shifts=shifts)
    return result if isinstance(result, list) else [result]


class ExplainWidget(FollowsTargetLayer, GradCamWidget):
    """Explain the shared model's decision on an image layer as heatmap layers."""

    what = "Explaining"

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer)
        lay = self.layout()
        self.params = ExplainParams()
        self.image = layer_picker(self.viewer, "image", tooltip="The image layer to explain (the slice on screen).")
        self.form, controls = build_form(self.params, owner=self, before=(self.image,))
        self.method, self.target, self.scale = controls["method"], controls["target"], controls["scale"]
        self.layer, self.shifts, self.keep = controls["layer"], controls["shifts"], controls["keep"]
        lay.addWidget(self.form.native)
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
    def _method_choices(self, _widget=None) -> list:
        return method_choices()

    def _target_choices(self, _widget=None) -> list:
        return target_choices(self.state.bundle)

    def _layer_choices(self, _widget=None) -> list:
        return [FINE, *[(n, n) for n in self.state.layers]]

    def _on_method(self, name: str) -> None:
        """A method with a layer preset of its own (layercam-fine) shows it; others the model's layer.
        Controls the method ignores (the layer of a pixel attribution or of CAM, sub-cell shifts of a
        pixel attribution) are disabled, as the engine's method spec says."""
        spec = get_method(name)
        layer = self._layer_for(name, self.layer.value)
        if layer != self.layer.value:
            self._on_target_layer(layer)
        uses = applicable_controls(spec)
        self.layer.enabled = uses["layer"]
        self.shifts.enabled = uses["shifts"]
        self.layer.native.setToolTip(self._layer_tip if uses["layer"] else
                                     f"{spec.title} does not use this setting ({uses['why_not_layer']}).")
        self.shifts.native.setToolTip(self._shifts_tip if uses["shifts"] else
                                      f"{spec.title} does not use this setting ({uses['why_not_shifts']}).")

    def _layer_for(self, method: str, layer: str) -> str:
        """The layer that goes with ``method`` when the form's is ``layer``: a method with a layer preset of its
        own (layercam-fine) takes the preset; another method leaves the preset for the model's layer."""
        if get_method(method).default_layers is not None:
            return FINE[1]
        return self.state.target_layer if layer == FINE[1] else layer

    def _on_model(self, _bundle=None) -> None:
        self.target.reset_choices()
        self.layer.reset_choices()
        self._on_target_layer(self.state.target_layer)
        self._on_target()

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
        """Explain ``layer`` (default: the chosen one) with the form's parameters, the given ones set in the
        form first (it shows what ran; the work gets a copy, never the controls); returns the worker (or None).

        ``target``: a class name, "predicted" or "all"; ``target_layer``: the model layer.  While a run is
        going on, another is refused (a notification).
        """
        if self.refuse_if_busy():
            return None
        try:
            if method is not None:
                from ..engine import canonical_method

                method = canonical_method(method)
            if target is not None:
                target = ALL if target in ("all", ALL) else (PREDICTED if target in ("predicted", PREDICTED)
                                                             else target)
            if method is not None and target_layer is None:  # the layer a method chosen in the form would get
                target_layer = self._layer_for(method, self.params.layer)
            p = adopt(self.params, method=method, target=target, layer=target_layer, keep=keep, shifts=shifts,
                      scale=scale)
        except GradCamError as e:
            self.jobs.fail(str(e))
            return None
        picked = self.plane_to_explain(layer)
        if picked is None:
            return None
        model, layer, plane = picked
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

"""Feature maps widget: the most active channels of a layer, as a stack (slider) or a grid."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QPushButton

from ._base import FollowsTargetLayer, GradCamWidget, camera_of, layer_picker, picker_caption, wrapping_label
from .layers import feature_layers, replace_plugin_layers
from .form import build_form
from .params import DISPLAYS, FeatureParams, adopt  # noqa: F401 - DISPLAYS re-exported

if TYPE_CHECKING:  # pragma: no cover
    import napari



def _features(bundle, data, layer: str | None, n: int):
    from ..engine import feature_maps

    return feature_maps(bundle, data, layer=layer, n=n)


class FeatureMapsWidget(FollowsTargetLayer, GradCamWidget):
    """Show what a layer of the shared model responds to in an image."""

    what = "Computing feature maps"

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer)
        lay = self.layout()
        self.params = FeatureParams()
        self.image = layer_picker(self.viewer, "image", tooltip="The image layer to run the model on.")
        self.form, controls = build_form(self.params, owner=self, before=(self.image,))
        self.layer, self.count, self.display, self.keep = (controls[k] for k in ("layer", "count", "display", "keep"))
        lay.addWidget(self.form.native)
        lay.addWidget(picker_caption(self.image, "Runs the model on"))
        self.run_button = QPushButton("Show feature maps")
        self.run_button.clicked.connect(lambda: self.run())
        self.add_run_row(self.run_button)
        self.result_label = wrapping_label()
        lay.addWidget(self.result_label)
        lay.addStretch(1)
        self.layers_added: list = []
        self._view_before_grid = None
        self.state.model_changed.connect(self._on_model)
        self.state.target_layer_changed.connect(self._on_target_layer)
        self._on_model()

    def _layer_choices(self, _widget=None) -> list[str]:
        return list(self.state.layers)

    def _on_model(self, _bundle=None) -> None:
        self.layer.reset_choices()
        self._on_target_layer(self.state.target_layer)

    def reset_choices(self, *_args) -> None:
        self.image.reset_choices()
        self.layer.reset_choices()

    def run(self, layer=None, model_layer: str | None = None, n: int | None = None, display: str | None = None):
        """Compute and add the feature maps with the form's parameters, the given ones (the model layer, the
        number of channels, the display) set in the form first; returns the worker (or None).

        While a run is going on, another is refused (a notification) and the form is left as it is.
        """
        if self.refuse_if_busy():
            return None
        p = adopt(self.params, layer=model_layer, count=n, display=display)
        picked = self.plane_to_explain(layer)
        if picked is None:
            return None
        model, layer, plane = picked
        shape = tuple(plane.data.shape[:2])
        return self.jobs.start(
            _features, model.bundle, plane.data, p.layer or None, int(p.count), model=model, sources=[layer],
            removed_message=f"Layer {plane.name!r} was removed while its feature maps were computed; "
                            "nothing was added.",
            on_result=lambda job, fm: self._add(job, fm, plane, layer, shape, p))

    def _add(self, job, fm, plane, layer, shape, p: FeatureParams) -> None:
        self.layers_added = []
        grid = p.display == "grid"
        tuples = feature_layers(fm, plane, shape, grid=grid, model=job.model.name)
        self.layers_added = replace_plugin_layers(self.viewer, tuples, "features", plane.name, p.keep, layer)
        self.viewer.layers.selection.active = layer
        self._frame(grid)
        n, h, w = fm.maps.shape
        self.result_label.setText(f"{n} channels of {fm.layer} ({h} x {w}), most active first: "
                                  + ", ".join(str(int(c)) for c in fm.channels[:8]) + ("…" if n > 8 else ""))

    def _frame(self, grid: bool) -> None:
        """A grid beside the image: everything in view; back to a stack: the view from before the grid."""
        camera = camera_of(self.viewer)
        if grid:
            if self._view_before_grid is None:
                self._view_before_grid = (tuple(camera.center), float(camera.zoom))
            self.viewer.reset_view()
        elif self._view_before_grid is not None:
            camera.center, camera.zoom = self._view_before_grid
            self._view_before_grid = None

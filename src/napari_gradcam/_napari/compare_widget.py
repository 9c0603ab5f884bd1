"""Compare methods: every method's map of one image as a grid of labelled layers, and a table of their scores.

The Compare tab (:class:`CompareWidget`) runs :func:`napari_gradcam.compare.iter_compare_methods` in a
job with progress and Cancel; the layers are built by :func:`compare_layers` (plain data, no viewer), the
cells are named by :func:`grid_labels` (a Points layer with text), the scores shown in a
:class:`CompareTable`, and the view moves to the grid.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QPushButton, QSizePolicy, QTableWidget, QTableWidgetItem

from ._base import FollowsTargetLayer, GradCamWidget, camera_of, layer_picker, picker_caption, section, wrapping_label
from .choices import FINE, PREDICTED, method_choices, target_choices
from .layers import TAG, ImagePlane, _place, display_of, replace_plugin_layers, result_name
from .form import build_form
from .params import CompareParams, adopt, snapshot

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..compare import MethodComparison

#: gap between grid cells, a fraction of the image's size
GAP = 0.05
COLUMNS = ("method", "deletion\nAUC ↓", "insertion\nAUC ↑", "randomis.\ncorr.", "depends\non model")


def _compare_job(bundle, data, methods, target, layer):
    from ..compare import iter_compare_methods

    return (yield from iter_compare_methods(bundle, data, methods=methods, target=target, layer=layer))


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, columns) of a grid for ``n`` maps: as square as possible, wider than tall."""
    cols = max(1, math.ceil(math.sqrt(n)))
    return max(1, math.ceil(n / cols)), cols


def compare_layers(result: "MethodComparison", plane: ImagePlane, model: str = "") -> list[tuple]:
    """One Image LayerDataTuple per method, laid out in a grid to the right of the source image.

    Each layer is named ``"<method> <class> [<source>]"``; unsigned maps use the heatmap colormap in
    [0, 1], signed ones the diverging one in [-1, 1].  Cell (row r, column c) sits at
    ``(r, c + 1)`` image sizes (plus a small gap) from the image.
    """
    h, w = np.asarray(result.rows[0].heatmap.data).shape if result.rows else (0, 0)
    _, cols = grid_shape(len(result.rows))
    out = []
    for i, row in enumerate(result.rows):
        r, c = divmod(i, cols)
        data, geo = _place(np.asarray(row.heatmap.data, dtype=np.float32), plane)
        translate = list(geo["translate"])
        translate[-2] += plane.scale[-2] * h * (1 + GAP) * r
        translate[-1] += plane.scale[-1] * w * (1 + GAP) * (c + 1)
        meta = {TAG: "compare", "widget": "compare", "method": row.method, "title": row.title,
                "target": result.target, "source": plane.name, "slice": list(plane.index), "model": model, "signed": row.signed,
                **{k: v for k, v in row.to_dict().items() if k not in ("method", "title", "family", "signed")}}
        shown = display_of(row.signed)
        kwargs = {"name": result_name(f"{row.title} {result.target}", plane.label),
                  "colormap": shown["colormap"], "contrast_limits": shown["contrast_limits"],
                  "interpolation2d": "linear", "metadata": meta, "scale": geo["scale"], "translate": tuple(translate)}
        out.append((data, kwargs, "image"))
    return out


class CompareTable(QTableWidget):
    """The scores of a :class:`MethodComparison`, one row per method (hidden until there is one)."""

    def __init__(self, parent=None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(list(COLUMNS))
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        self.setWordWrap(True)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)  # the numbers whole, the names the rest
        self.setSizeAdjustPolicy(QAbstractItemView.SizeAdjustPolicy.AdjustToContents)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.setToolTip("Deletion AUC: lower is more faithful; insertion AUC: higher. Randomisation corr.: rank "
                        "correlation with the map of a model whose top layers are re-initialised; a method whose "
                        "map barely changes (NO) does not show what the model learned.")
        self.setVisible(False)

    def show_result(self, result: "MethodComparison") -> None:
        from ..compare import _fmt

        self.setRowCount(len(result.rows))
        for i, row in enumerate(result.rows):
            cells = [row.title, _fmt(row.deletion_auc), _fmt(row.insertion_auc), _fmt(row.randomisation_correlation),
                     {True: "yes", False: "NO", None: "-"}[row.model_dependent]]
            for j, text in enumerate(cells):
                self.setItem(i, j, QTableWidgetItem(text))
        self.resizeRowsToContents()
        self.setVisible(True)

    def cells(self) -> list[list[str]]:
        """The table's text, row by row (for tests and copying)."""
        return [[self.item(i, j).text() for j in range(self.columnCount())] for i in range(self.rowCount())]


def grid_labels(layers: Sequence, plane: ImagePlane) -> tuple | None:
    """A Points LayerDataTuple whose text names each grid cell (its method: the class is the same for all,
    and in the layer names), just above its top-left corner; None without cells."""
    if not layers:
        return None
    n_lead = len(plane.index)
    coords, text = [], []
    for data, kwargs, _ in layers:
        scale, translate = np.asarray(kwargs["scale"], float), np.asarray(kwargs["translate"], float)
        top_left = translate - scale / 2  # the cell's corner in the world (pixel centres at i * scale + translate)
        top_left[:n_lead] = translate[:n_lead]
        coords.append(top_left)
        text.append(kwargs["metadata"]["title"])
    meta = {TAG: "compare labels", "widget": "compare labels", "source": plane.name}
    # the text scales with the view (its size in world units): the longest name spans at most a cell's width,
    # so that neighbouring names never run into each other, at any zoom
    cell = float(np.min(np.abs(np.asarray(layers[0][1]["scale"], float)[-2:])
                        * np.asarray(np.shape(layers[0][0])[-2:], float)))
    size = min(0.9 * cell / max(len(t) for t in text), 0.1 * cell)  # a character is about a size wide at most
    kwargs = {"name": f"method names [{plane.label}]", "features": {"label": text}, "size": 1, "opacity": 1.0,
              "face_color": "transparent", "border_width": 0,
              "text": {"string": "{label}", "anchor": "lower_left", "color": "white", "size": size, "scaling": True},
              "metadata": meta}
    return np.asarray(coords, float), kwargs, "points"


def fit_view(viewer: "napari.Viewer", layers: Sequence, margin: float = 0.92) -> None:
    """Centre the camera on ``layers`` and zoom so that all of them are in view (like ``reset_view``, over
    these layers only)."""
    ext = np.asarray([layer.extent.world[:, -2:] for layer in layers], float)
    lo, hi = ext[:, 0].min(axis=0), ext[:, 1].max(axis=0)
    camera = camera_of(viewer)
    try:
        size = np.asarray(viewer.window._qt_viewer.canvas.size, float)  # (height, width) in screen px
    except Exception:  # noqa: BLE001 - no window: napari's own fit
        viewer.reset_view()
        return
    span = np.maximum(hi - lo, 1e-9)
    centre = list(camera.center)
    centre[-2:] = (lo + hi) / 2
    camera.center = tuple(centre)
    camera.zoom = float(margin * np.min(size / span))


class CompareWidget(FollowsTargetLayer, GradCamWidget):
    """Every method's map of one image side by side (a labelled grid), with faithfulness and sanity scores."""

    what = "Comparing methods"

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer)
        from ..compare import default_methods

        lay = self.layout()
        self.params = CompareParams(methods=tuple(default_methods(None)))  # every method but the slow ones
        self.image = layer_picker(self.viewer, "image", tooltip="The image layer whose maps are compared "
                                                                "(the slice on screen).")
        self.form, controls = build_form(self.params, owner=self, before=(self.image,))
        self.target, self.layer, self.methods = controls["target"], controls["layer"], controls["methods"]
        self.methods.native.setMinimumHeight(110)
        lay.addWidget(self.form.native)
        lay.addWidget(picker_caption(self.image, "Compares on"))
        self.run_button = QPushButton("Compare methods")
        self.run_button.setToolTip("Every chosen method's map of this image in a grid beside it, with deletion / "
                                   "insertion AUC and a model-randomisation sanity check in a table.")
        self.run_button.clicked.connect(lambda: self.run())
        self.add_run_row(self.run_button)
        lay.addWidget(section("Scores"))
        self.result_label = wrapping_label(rich=True)
        lay.addWidget(self.result_label)
        self.compare_table = CompareTable()
        lay.addWidget(self.compare_table)
        lay.addStretch(1)
        self.comparison = None
        self.compare_layers_added: list = []
        self.state.model_changed.connect(self._on_model)
        self.state.target_layer_changed.connect(self._on_target_layer)
        self._on_model()

    def _target_choices(self, _widget=None) -> list:
        return target_choices(self.state.bundle, everything=False)

    def _layer_choices(self, _widget=None) -> list:
        return [FINE, *[(n, n) for n in self.state.layers]]

    def _method_choices(self, _widget=None) -> list:
        return method_choices()

    def _on_model(self, _bundle=None) -> None:
        self.target.reset_choices()
        self.layer.reset_choices()
        self._on_target_layer(self.state.target_layer)

    def reset_choices(self, *_args) -> None:
        self.image.reset_choices()
        self.target.reset_choices()
        self.layer.reset_choices()

    def run(self, layer=None, methods: "Sequence[str] | str | None" = None, target: str | None = None,
            target_layer: str | None = None):
        """Compare ``methods`` on ``layer`` (default: the chosen image) for ``target`` (a class, or the predicted
        one) at ``target_layer`` (the model layer); arguments left out are the form's, the given ones are set
        in the form (which shows what ran).  Returns the worker (or None)."""
        if self.refuse_if_busy():
            return None
        if methods is not None:
            methods = (methods,) if isinstance(methods, str) else tuple(methods)
        target = PREDICTED if target in ("predicted", "all", "all classes") else target
        p = adopt(self.params, methods=methods, target=target, layer=target_layer)
        if methods is not None:  # in the order asked (the form's list shows them in the registry's order)
            p = snapshot(p, methods=methods)
        picked = self.plane_to_explain(layer)
        if picked is None:
            return None
        model, layer, plane = picked
        if not p.methods:
            self.jobs.fail("Choose at least one method to compare.")
            return None
        target = None if p.target in (None, "", PREDICTED) else p.target
        total = len(p.methods)
        return self.jobs.start(
            _compare_job, model.bundle, plane.data, list(p.methods), target, p.layer or None, model=model,
            sources=[layer], total=total,
            removed_message=f"Layer {plane.name!r} was removed while methods were compared; no map was added.",
            on_result=lambda job, result: self._add(job, result, plane, layer))

    #: for scripts written against the Explain widget's former "Compare methods" button
    compare = run

    def _add(self, job, result: "MethodComparison", plane: ImagePlane, layer) -> None:
        maps = compare_layers(result, plane, job.model.name)
        self.compare_layers_added = replace_plugin_layers(self.viewer, maps, "compare", plane.name, source_layer=layer)
        labels = grid_labels(maps, plane)
        replace_plugin_layers(self.viewer, [labels] if labels else [], "compare labels", plane.name,
                              source_layer=layer)
        self.viewer.layers.selection.active = layer
        self.compare_table.show_result(result)
        self.comparison = result
        notes = "<br>".join(result.notes)
        self.result_label.setText(f"<b>{result.target}</b> (p = {result.probability:.1%}) on {plane.name}, "
                                  f"{len(result.rows)} methods; model: {job.model.name}"
                                  + (f"<br><small>{notes}</small>" if notes else ""))
        fit_view(self.viewer, [layer, *self.compare_layers_added])

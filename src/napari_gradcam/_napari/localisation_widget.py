"""Heatmap vs outline widget: does a heatmap layer point at the lesion a user outlined?

The outline is a Labels layer (nonzero = lesion; its slice at the heatmap's position for a stack)
or a Shapes layer (rasterised with ``Shapes.to_labels``).  Either is brought onto the heatmap's
pixel grid through world coordinates (each layer's scale and translate), so an outline drawn over
the source image lines up with the heatmap that overlays it.  The metrics are those of
:func:`napari_gradcam.localisation.localisation_scores`; with "deletion / insertion curves" the
shared model also scores the heatmap on its source image
(:func:`napari_gradcam.localisation.deletion_insertion`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QPushButton, QTableWidget, QTableWidgetItem

from ..errors import GradCamError
from ._base import GradCamWidget, ImageLayerPicker, notify_error, section
from .layers import layer_plane

if TYPE_CHECKING:  # pragma: no cover
    import napari

#: table rows: (key of the result dict, label); "pointing_tol"'s label gets the tolerance
ROWS = (
    ("pointing", "pointing game hit"),
    ("pointing_tol", "pointing game hit (± {tol:g} px)"),
    ("energy", "energy inside outline"),
    ("mask_share", "outline's share of image"),
    ("energy_ratio", "energy ratio (1 = chance)"),
    ("iou_otsu", "IoU (Otsu threshold)"),
    ("dice_otsu", "Dice (Otsu threshold)"),
    ("iou_fixed", "IoU (≥ {level:g} × max)"),
    ("dice_fixed", "Dice (≥ {level:g} × max)"),
    ("deletion_auc", "deletion AUC (lower is better)"),
    ("insertion_auc", "insertion AUC (higher is better)"),
)


# ----------------------------------------------------------------------------- layer pickers
def heatmap_layers(viewer: "napari.Viewer") -> list:
    """Every Image layer, those with a ``method`` in their metadata (heatmaps) first."""
    from napari.layers import Image

    images = [layer for layer in viewer.layers if isinstance(layer, Image)]
    return sorted(images, key=lambda layer: "method" not in layer.metadata)  # stable: keeps layer order


def outline_layers(viewer: "napari.Viewer") -> list:
    """Labels and Shapes layers."""
    from napari.layers import Labels, Shapes

    return [layer for layer in viewer.layers if isinstance(layer, (Labels, Shapes))]


class _LayerPicker(ImageLayerPicker):
    """:class:`ImageLayerPicker`'s live dropdown, over another set of layers."""

    def __init__(self, viewer, label: str, eligible, missing: str, tooltip: str, prefer=None) -> None:
        self._eligible = eligible
        self._missing = missing
        self._prefer = prefer or (lambda layer: False)
        super().__init__(viewer, label)
        self.combo.native.setToolTip(tooltip)

    def _choices(self, _widget=None) -> list:
        return [(layer.name, layer) for layer in self._eligible(self.viewer)]

    def _select_if_eligible(self, layer) -> None:
        if layer is not None and any(layer is x for x in self._eligible(self.viewer)):
            try:
                self.combo.value = layer
            except (ValueError, RuntimeError):
                pass

    def _on_inserted(self, event=None) -> None:
        super()._on_inserted(event)
        layer = getattr(event, "value", None)
        if layer is not None and self._prefer(layer):  # a new heatmap: compare it next
            self._select_if_eligible(layer)

    def _on_active(self, event=None) -> None:
        self.reset_choices()
        self._select_if_eligible(self.viewer.layers.selection.active)

    def require(self):
        layer = self.value
        if layer is None:
            notify_error(self._missing)
        return layer


# ----------------------------------------------------------------------------- outline -> mask
def _yx(layer) -> tuple[np.ndarray, np.ndarray]:
    """Scale and translate of the layer's last two (spatial) axes."""
    return np.asarray(layer.scale, float)[-2:], np.asarray(layer.translate, float)[-2:]


def _check_axis_aligned(layer) -> None:
    ndim = int(layer.ndim)
    if not (np.allclose(layer.rotate, np.eye(ndim)) and np.allclose(layer.shear, 0)
            and np.allclose(layer.affine.affine_matrix, np.eye(ndim + 1))):
        raise GradCamError(f"Layer {layer.name!r} is rotated, sheared or has an affine transform; "
                           "only scale and translate are supported here.")


def _world_point(viewer, heatmap, plane) -> np.ndarray:
    """The viewer's current point, with the heatmap's own slice on its leading axes."""
    point = np.asarray(viewer.dims.point, float).copy()
    n_lead = len(plane.index)
    if n_lead and len(point) >= heatmap.ndim:
        lead = np.asarray(plane.index, float) * plane.scale[:n_lead] + plane.translate[:n_lead]
        point[len(point) - heatmap.ndim: len(point) - heatmap.ndim + n_lead] = lead
    return point


def _leading(layer, point: np.ndarray) -> np.ndarray:
    """The layer's data coordinates of ``point`` on its leading (non-spatial) axes, rounded."""
    n_lead = int(layer.ndim) - 2
    if n_lead <= 0:
        return np.zeros(0, int)
    coords = np.asarray(layer.world_to_data(point), float)
    coords = coords[-layer.ndim:] if len(coords) >= layer.ndim else np.pad(coords, (layer.ndim - len(coords), 0))
    return np.rint(coords[:n_lead]).astype(int)


def labels_mask(layer, shape: tuple[int, int], scale, translate, point) -> tuple[np.ndarray, int]:
    """A Labels layer's slice at ``point``, resampled (nearest) onto a grid; (mask, outline pixels)."""
    data = layer.data[0] if layer.multiscale else layer.data
    lead = _leading(layer, point)
    lead = tuple(int(np.clip(i, 0, n - 1)) for i, n in zip(lead, data.shape[:len(lead)]))
    plane = np.asarray(data[lead] if lead else data)
    n_outline = int(np.count_nonzero(plane))
    ls, lt = _yx(layer)
    axes = []
    for k in range(2):  # heatmap pixel centre -> world -> labels pixel
        world = np.arange(shape[k]) * scale[k] + translate[k]
        idx = np.rint((world - lt[k]) / ls[k]).astype(np.int64)
        axes.append((idx, (idx >= 0) & (idx < plane.shape[k])))
    (ri, rv), (ci, cv) = axes
    mask = plane[np.ix_(np.clip(ri, 0, plane.shape[0] - 1), np.clip(ci, 0, plane.shape[1] - 1))] != 0
    mask &= rv[:, None] & cv[None, :]
    return mask, n_outline


def shapes_mask(layer, shape: tuple[int, int], scale, translate, point) -> tuple[np.ndarray, int]:
    """A Shapes layer's shapes (at ``point``'s slice) rasterised onto a grid; (mask, number of shapes)."""
    from napari.layers import Shapes

    lead = _leading(layer, point)
    ss, st = _yx(layer)
    data, types = [], []
    for pts, kind in zip(layer.data, layer.shape_type):
        pts = np.asarray(pts, float)
        if len(lead) and not np.all(np.rint(pts[:, :len(lead)]) == lead):
            continue  # a shape on another slice
        data.append((pts[:, -2:] * ss + st - translate) / scale)  # shapes data -> world -> heatmap data
        types.append(kind)
    if not data:
        return np.zeros(shape, bool), 0
    return Shapes(data, shape_type=types).to_labels(labels_shape=tuple(shape)) != 0, len(data)


def outline_mask(viewer, heatmap, plane, outline) -> np.ndarray:
    """The outline layer as a boolean mask on the heatmap plane's pixel grid (errors: one sentence)."""
    from napari.layers import Labels

    for layer in (heatmap, outline):
        _check_axis_aligned(layer)
    shape = tuple(int(n) for n in plane.data.shape[:2])
    scale, translate = plane.scale[-2:], plane.translate[-2:]
    point = _world_point(viewer, heatmap, plane)
    if int(outline.ndim) < 2:
        raise GradCamError(f"Layer {outline.name!r} is not 2D; draw the outline in a 2D Labels or Shapes layer.")
    if isinstance(outline, Labels):
        mask, n = labels_mask(outline, shape, scale, translate, point)
    else:
        mask, n = shapes_mask(outline, shape, scale, translate, point)
    where = " at this slice" if int(outline.ndim) > 2 else ""
    if n == 0:
        raise GradCamError(f"The outline {outline.name!r} is empty{where}; draw the lesion in it first.")
    if not mask.any():
        raise GradCamError(f"The outline {outline.name!r} lies outside the heatmap {heatmap.name!r}; "
                           "check that both overlay the same image (their scale and translate).")
    return mask


# ----------------------------------------------------------------------------- worker
def _compare(state, heat, mask, tolerance: float, level: float, curves: dict | None) -> dict[str, Any]:
    from ..localisation import deletion_insertion, localisation_scores

    heat = np.asarray(heat, dtype=np.float32)
    result = localisation_scores(heat, mask, tolerance=tolerance, level=level)
    if curves is not None:
        image = np.asarray(curves["image"])
        if image.shape[:2] != heat.shape:
            raise GradCamError(f"The heatmap {heat.shape} and its source image {image.shape[:2]} have different "
                               "sizes; explain the image again.")
        with state.lock:
            di = deletion_insertion(state.bundle, image, heat, curves["target"])
        result.update(deletion_auc=di["deletion_auc"], insertion_auc=di["insertion_auc"])
    return result


def _format(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.3f}"


class LocalisationWidget(GradCamWidget):
    """Compare a heatmap layer with a lesion outline (Labels or Shapes) and show localisation metrics."""

    what = "Comparing"

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer)
        from magicgui.widgets import CheckBox, Container, FloatSpinBox

        lay = self.layout()
        self.heatmap = _LayerPicker(
            self.viewer, "heatmap", heatmap_layers,
            "There is no heatmap layer to compare: make one with the Explain widget first.",
            "The heatmap (an image layer; those made by the Explain widget come first).",
            prefer=lambda layer: "method" in getattr(layer, "metadata", {}),
        )
        self.outline = _LayerPicker(
            self.viewer, "outline", outline_layers,
            "There is no outline to compare with: draw the lesion in a Labels or Shapes layer first.",
            "The lesion's outline: a Labels layer (nonzero = lesion) or a Shapes layer.",
        )
        self.tolerance = FloatSpinBox(label="pointing tolerance (px)", value=15.0, min=0.0, max=10_000.0, step=1.0)
        self.tolerance.native.setToolTip("A heatmap maximum this close to the outline counts as a hit "
                                         "(Zhang et al. use 15 px at 224 px).")
        self.level = FloatSpinBox(label="fixed threshold (× max)", value=0.5, min=0.0, max=1.0, step=0.05)
        self.level.native.setToolTip("IoU / Dice of the heatmap pixels >= this fraction of its maximum.")
        self.curves = CheckBox(text="deletion / insertion curves (needs the model)", value=False)
        self.curves.native.setToolTip("Also run the model on the heatmap's source image with its most relevant "
                                      "pixels deleted / inserted (slower).")
        form = Container(widgets=[self.heatmap.combo, self.outline.combo, self.tolerance, self.level, self.curves],
                         labels=True)
        form.native.layout().setContentsMargins(0, 0, 0, 0)
        lay.addWidget(form.native)
        self.run_button = QPushButton("Compare")
        self.run_button.clicked.connect(lambda: self.run())
        lay.addWidget(self.run_button)
        lay.addWidget(section("Localisation"))
        self.result_label = QLabel("")
        self.result_label.setTextFormat(Qt.TextFormat.RichText)
        self.result_label.setWordWrap(True)
        lay.addWidget(self.result_label)
        self.table = QTableWidget(0, 2)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setHorizontalHeaderLabels(["metric", "value"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(150)
        lay.addWidget(self.table, 1)
        #: the last metrics (localisation_scores' dict, plus the AUCs with curves)
        self.result: dict | None = None

    def reset_choices(self, *_args) -> None:
        self.heatmap.reset_choices()
        self.outline.reset_choices()

    # ----------------------------------------------------------------- run
    def run(self, heatmap=None, outline=None, tolerance: float | None = None, level: float | None = None,
            curves: bool | None = None):
        """Compare ``heatmap`` with ``outline`` (default: the chosen layers); returns the worker (or None)."""
        for widget, value in ((self.heatmap, heatmap), (self.outline, outline), (self.tolerance, tolerance),
                              (self.level, level), (self.curves, curves)):
            if value is not None:
                try:
                    widget.value = value
                except (ValueError, TypeError) as e:
                    notify_error(f"{value!r} is not a valid choice here ({e}).")
                    self.last_error = "bad argument"
                    return None
        heat_layer = self.heatmap.require()
        outline_layer = self.outline.require() if heat_layer is not None else None
        if heat_layer is None or outline_layer is None:
            self.last_error = "no heatmap" if heat_layer is None else "no outline"
            return None
        try:
            plane = layer_plane(self.viewer, heat_layer)
            if plane.data.ndim != 2:
                raise GradCamError(f"Layer {heat_layer.name!r} is RGB; a heatmap has one value per pixel.")
            mask = outline_mask(self.viewer, heat_layer, plane, outline_layer)
            curves_args = self._curves_args(heat_layer, plane) if self.curves.value else None
        except Exception as e:  # noqa: BLE001 - GradCamError from the layers
            self.last_error = str(e)
            notify_error(e, self.what)
            return None
        if self.curves.value and curves_args is None:
            return None
        tol, lev = float(self.tolerance.value), float(self.level.value)
        names = (heat_layer.name, outline_layer.name)
        return self.start(_compare, self.state, plane.data, mask, tol, lev, curves_args,
                          on_returned=lambda r: self._show(r, names, tol, lev))

    def _curves_args(self, heat_layer, plane) -> dict | None:
        """The source image plane and target class for deletion/insertion, or None + a notification."""
        if self.require_model() is None:
            return None
        meta = heat_layer.metadata
        source = meta.get("source")
        if not source or source not in self.viewer.layers:
            raise GradCamError(f"The source image of {heat_layer.name!r} is not in the viewer; deletion/insertion "
                               "needs a heatmap made by the Explain widget and its image.")
        target = meta.get("target", meta.get("target_index"))
        if target is None:
            raise GradCamError(f"Layer {heat_layer.name!r} does not say which class it explains; "
                               "make it with the Explain widget.")
        src = self.viewer.layers[source]
        n_lead = int(src.ndim) - 2
        index = tuple(meta.get("slice") or ()) if n_lead else ()
        src_plane = layer_plane(self.viewer, src, index=index if len(index) == n_lead else None)
        self.state.bundle.class_index(target)  # an unknown class: GradCamError now, not in the worker
        return {"image": src_plane.data, "target": target}

    # ----------------------------------------------------------------- results
    def _show(self, result: dict, names: tuple[str, str], tol: float, level: float) -> None:
        self.result = dict(result)
        rows = [(label.format(tol=tol, level=level), result[key]) for key, label in ROWS if key in result]
        t = self.table
        t.setRowCount(len(rows))
        for r, (label, value) in enumerate(rows):
            t.setItem(r, 0, QTableWidgetItem(label))
            item = QTableWidgetItem(_format(value))
            item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            t.setItem(r, 1, item)
        hit = "points at" if result["pointing"] else "misses"
        self.result_label.setText(f"<b>{names[0]}</b> {hit} <b>{names[1]}</b>; "
                                  f"{result['energy']:.1%} of its energy is inside.")

    def table_values(self) -> dict[str, str]:
        """The table as {metric label: shown value} (for tests and copying)."""
        t = self.table
        return {t.item(r, 0).text(): t.item(r, 1).text() for r in range(t.rowCount())}

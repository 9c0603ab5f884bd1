"""Heatmap vs outline widget: does a heatmap layer point at the lesion a user outlined?

The outline is a Labels layer (nonzero = lesion; its slice at the heatmap's position for a stack)
or a Shapes layer (rasterised with ``Shapes.to_labels``).  Either is brought onto the heatmap's
pixel grid through world coordinates (each layer's scale and translate), so an outline drawn over
the source image lines up with the heatmap that overlays it.  The metrics are those of
:func:`napari_gradcam.localisation.localisation_scores`; with "deletion / insertion curves" the
model of the moment also scores the heatmap on its source image, the very layer it was computed from
(:func:`napari_gradcam.localisation.deletion_insertion`).  A coarse heatmap (the Explain widget's: one
value per feature-map cell) is compared on its source image's pixel grid, upsampled as napari shows it.
"""

from __future__ import annotations

import math
from html import escape
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QPushButton, QTableWidget, QTableWidgetItem

from ..errors import GradCamError
from ._base import GradCamWidget, error_message, layer_picker, notify_error, section, wrapping_label
from .layers import ImagePlane, layer_plane
from .form import build_form
from .params import LocalisationParams, adopt

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
def is_heatmap(layer) -> bool:
    """An image layer that says which method made it (the Explain widget's heatmaps)."""
    return "method" in getattr(layer, "metadata", {})


def heatmap_layers(viewer: "napari.Viewer") -> list:
    """Every Image layer: heatmaps first, newest run first (the run of the highest heatmap in the layer
    list) and, within a run of several classes, the most probable class first; then the other images."""
    from napari.layers import Image

    images = [layer for layer in viewer.layers if isinstance(layer, Image)]
    heats = [(i, layer) for i, layer in enumerate(images) if is_heatmap(layer)]
    newest: dict = {}
    for i, layer in heats:
        run = layer.metadata.get("run") or id(layer)
        newest[run] = max(newest.get(run, -1), i)

    def order(item):
        i, layer = item
        score = layer.metadata.get("score")
        return (-newest[layer.metadata.get("run") or id(layer)], -(score if isinstance(score, (int, float)) else 0), -i)

    return [layer for _, layer in sorted(heats, key=order)] + [layer for layer in images if not is_heatmap(layer)]


def outline_layers(viewer: "napari.Viewer") -> list:
    """Labels and Shapes layers."""
    from napari.layers import Labels, Shapes

    return [layer for layer in viewer.layers if isinstance(layer, (Labels, Shapes))]


def source_of(viewer: "napari.Viewer", heat_layer):
    """The image layer a heatmap was computed from: the very layer (``metadata["source_id"]``, its
    ``unique_id``), never one that merely has its name; None when it is not in the viewer."""
    wanted = heat_layer.metadata.get("source_id")
    if not wanted:
        return None
    return next((layer for layer in viewer.layers if str(layer.unique_id) == wanted), None)


def outline_mismatch(viewer: "napari.Viewer", heat_layer, outline) -> str | None:
    """Why ``outline`` cannot be scored against ``heat_layer`` (one sentence), or None when it belongs to the
    heatmap's own source image.

    Only a heatmap this plugin made knows its source (``metadata["source_id"]``; the heatmap itself stands
    in for it when the source was closed).  The outline belongs to it when its metadata names that image
    (a sample's outline), or, for a Labels layer, when it covers the same place as the image; for a Shapes
    layer, when every shape lies on the image.  Any other image's heatmap is scored where it lies.
    """
    meta = getattr(heat_layer, "metadata", None) or {}
    if not meta.get("source_id") and not meta.get("source"):
        return None
    src = source_of(viewer, heat_layer)
    ref = src if src is not None else heat_layer
    name = src.name if src is not None else meta.get("source", heat_layer.name)
    omark = getattr(outline, "metadata", None) or {}
    if omark.get("source_id") and src is not None and str(omark["source_id"]) == str(src.unique_id):
        return None
    if omark.get("image") and omark["image"] == name:
        return None
    if _lies_on(outline, ref) or not _overlaps(outline, ref):
        return None  # one that misses the image altogether is refused when it is scored ("lies outside")
    owner = f" (drawn for {omark['image']!r})" if omark.get("image") else ""
    return (f"The outline {outline.name!r}{owner} does not belong to {name!r}, the image the heatmap "
            f"{heat_layer.name!r} explains; choose or draw an outline over {name!r}.")


def _overlaps(outline, image) -> bool:
    """Whether the two layers' places in the world (last two axes) intersect."""
    from ._base import _spatial_extent

    try:
        a, b = _spatial_extent(outline), _spatial_extent(image)
    except Exception:  # noqa: BLE001 - an empty layer
        return False
    return bool(np.all(np.maximum(a[0], b[0]) < np.minimum(a[1], b[1])))


def _lies_on(outline, image) -> bool:
    """A Labels layer over the same place as ``image``; a Shapes layer whose shapes all lie on it."""
    from napari.layers import Labels

    from ._base import _spatial_extent, same_extent

    if isinstance(outline, Labels):
        return same_extent(outline, image)
    if not len(outline.data):
        return True  # empty: said when it is scored
    lo, hi = _spatial_extent(image)
    pts = np.concatenate([np.asarray(p, float)[:, -2:] for p in outline.data])
    world = pts * np.asarray(outline.scale, float)[-2:] + np.asarray(outline.translate, float)[-2:]
    return bool(np.all(world >= lo - 1e-6) and np.all(world <= hi + 1e-6))


def metric_grid(plane: ImagePlane, meta: dict) -> tuple[ImagePlane, tuple[int, int]]:
    """The pixel grid the metrics use, and its shape: the source image's for a coarse heatmap (its cells
    are ``image_shape / data.shape`` image pixels, centred on them), else the heatmap's own."""
    if not meta.get("coarse") or not meta.get("image_shape"):
        return plane, tuple(int(n) for n in plane.data.shape[:2])
    full = tuple(int(n) for n in meta["image_shape"])
    f = np.array([full[0] / plane.data.shape[0], full[1] / plane.data.shape[1]])
    scale, translate = plane.scale.copy(), plane.translate.copy()
    scale[-2:] = plane.scale[-2:] / f
    translate[-2:] = plane.translate[-2:] - scale[-2:] * (f - 1) / 2
    return ImagePlane(plane.data, plane.index, scale, translate, plane.level, plane.name), full


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


def outline_mask(viewer, heatmap, plane, outline, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The outline layer as a boolean mask on a pixel grid: ``plane``'s geometry (scale, translate), of
    ``shape`` (default: the plane's data's) (errors: one sentence)."""
    from napari.layers import Labels

    for layer in (heatmap, outline):
        _check_axis_aligned(layer)
    shape = tuple(int(n) for n in (shape or plane.data.shape[:2]))
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
def upsample(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(h, w) -> ``shape`` float32 by bilinear interpolation on pixel centres (napari's linear display)."""
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape == tuple(shape):
        return heat
    from skimage.transform import resize

    return resize(heat, shape, order=1, mode="edge", anti_aliasing=False, preserve_range=True).astype(np.float32)


def _compare(bundle, heat, shape, mask, tolerance: float, level: float, curves: dict | None) -> dict[str, Any]:
    from ..localisation import deletion_insertion, localisation_scores

    heat = upsample(heat, shape)
    result = localisation_scores(heat, mask, tolerance=tolerance, level=level)
    if curves is not None:
        image = np.asarray(curves["image"])
        if image.shape[:2] != heat.shape:
            raise GradCamError(f"The heatmap {heat.shape} and its source image {image.shape[:2]} have different "
                               "sizes; explain the image again.")
        di = deletion_insertion(bundle, image, heat, curves["target"])
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
        from napari.layers import Image, Layer

        lay = self.layout()
        self.params = LocalisationParams()
        self.heatmap = layer_picker(
            self.viewer, "heatmap", heatmap_layers, Image, prefer=is_heatmap,
            group=lambda layer: layer.metadata.get("run"),
            tooltip="The heatmap (an image layer; the newest made by the Explain widget is chosen by default).")
        self.outline = layer_picker(
            self.viewer, "outline", outline_layers, Layer,
            tooltip="The lesion's outline: a Labels layer (nonzero = lesion) or a Shapes layer.")
        self.form, controls = build_form(self.params, before=(self.heatmap, self.outline))
        self.tolerance, self.level, self.curves = controls["tolerance"], controls["level"], controls["curves"]
        lay.addWidget(self.form.native)
        self.pairing = wrapping_label(rich=True)
        lay.addWidget(self.pairing)
        self.heatmap.changed.connect(self._match_outline)
        self.outline.changed.connect(self._say_pairing)
        self.viewer.layers.events.inserted.connect(self._match_outline)
        self._match_outline()
        self.run_button = QPushButton("Score heatmap against outline")
        self.run_button.clicked.connect(lambda: self.run())
        self.add_run_row(self.run_button)
        lay.addWidget(section("Localisation"))
        self.result_label = wrapping_label(rich=True)
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

    # ----------------------------------------------------------------- the outline follows the heatmap
    def _match_outline(self, *_args) -> None:
        """Keep the outline on one that belongs to the chosen heatmap's source image (when there is one)."""
        try:
            self.outline.reset_choices()
            heat, current = self.heatmap.value, self.outline.value
            if heat is not None and (current is None or outline_mismatch(self.viewer, heat, current)):
                fits = [x for x in outline_layers(self.viewer) if not outline_mismatch(self.viewer, heat, x)]
                if fits:
                    self.outline.value = fits[-1]
        except RuntimeError:  # the Qt widgets are gone
            return
        self._say_pairing()

    def _say_pairing(self, *_args) -> None:
        """Say what will be scored against what (and when they do not belong together)."""
        heat, outline = self.heatmap.value, self.outline.value
        try:
            if heat is None or outline is None:
                self.pairing.setText("<small>Scores a heatmap against a lesion outline: <i>"
                                     + ("no heatmap yet" if heat is None else "no outline yet") + "</i></small>")
                return
            src = (heat.metadata or {}).get("source")
            of = f" (of <b>{escape(src)}</b>)" if src else ""
            problem = outline_mismatch(self.viewer, heat, outline)
            text = f"<small>Scores <b>{escape(heat.name)}</b>{of} against <b>{escape(outline.name)}</b>"
            self.pairing.setText(text + (f"<br><span style='color:#f0a040'>{escape(problem)}</span>" if problem
                                         else "") + "</small>")
        except RuntimeError:
            pass

    # ----------------------------------------------------------------- run
    def run(self, heatmap=None, outline=None, tolerance: float | None = None, level: float | None = None,
            curves: bool | None = None):
        """Compare ``heatmap`` with ``outline`` (default: the chosen layers); returns the worker (or None)."""
        if self.refuse_if_busy():
            return None
        p = adopt(self.params, tolerance=tolerance, level=level, curves=curves)
        for widget, value in ((self.heatmap, heatmap), (self.outline, outline)):
            if value is not None:
                try:
                    widget.reset_choices()
                    widget.value = value
                except (ValueError, TypeError) as e:
                    self.jobs.fail(f"{value!r} is not a valid choice here ({e}).")
                    return None
        heat_layer = self._require(self.heatmap, "There is no heatmap layer to compare: make one with the "
                                                 "Explain widget first.")
        outline_layer = heat_layer and self._require(
            self.outline, "There is no outline to compare with: draw the lesion in a Labels or Shapes layer first.")
        if heat_layer is None or outline_layer is None:
            return None
        mismatch = outline_mismatch(self.viewer, heat_layer, outline_layer)
        if mismatch is not None:
            self.jobs.fail(mismatch)
            return None
        model = self.jobs.capture_model() if p.curves else None
        if p.curves and model is None:
            return None
        try:
            plane = layer_plane(self.viewer, heat_layer)
            if plane.data.ndim != 2:
                raise GradCamError(f"Layer {heat_layer.name!r} is RGB; a heatmap has one value per pixel.")
            grid, shape = metric_grid(plane, heat_layer.metadata)
            mask = outline_mask(self.viewer, heat_layer, grid, outline_layer, shape)
            curves_args, source = self._curves_args(heat_layer, model) if p.curves else (None, None)
        except Exception as e:  # noqa: BLE001 - GradCamError from the layers
            self.last_error = error_message(e, self.what)
            notify_error(e, self.what)
            return None
        names = (heat_layer.name, outline_layer.name)
        sources = [heat_layer, outline_layer] + ([source] if source is not None else [])
        return self.jobs.start(
            _compare, model.bundle if model else None, plane.data, shape, mask, float(p.tolerance), float(p.level),
            curves_args, model=model, sources=sources,
            removed_message=f"A layer being compared ({names[0]!r} or {names[1]!r}) was removed; no metrics were shown.",
            on_result=lambda job, r: self._show(job, r, names, p))

    def _require(self, picker, missing: str):
        picker.reset_choices()
        layer = picker.value
        if layer is None or not any(layer is x for x in self.viewer.layers):
            self.jobs.fail(missing)
            return None
        return layer

    def _curves_args(self, heat_layer, model) -> tuple[dict, Any]:
        """The source image plane and target class for deletion/insertion, and the source layer (found by
        identity)."""
        meta = heat_layer.metadata
        src = source_of(self.viewer, heat_layer)
        if src is None:
            raise GradCamError(f"The source image of {heat_layer.name!r} is not in the viewer; deletion/insertion "
                               "needs a heatmap made by the Explain widget and its image.")
        target = meta.get("target", meta.get("target_index"))
        if target is None:
            raise GradCamError(f"Layer {heat_layer.name!r} does not say which class it explains; "
                               "make it with the Explain widget.")
        n_lead = int(src.ndim) - 2
        index = tuple(meta.get("slice") or ()) if n_lead else ()
        src_plane = layer_plane(self.viewer, src, index=index if len(index) == n_lead else None)
        model.bundle.class_index(target)  # an unknown class: GradCamError now, not in the worker
        return {"image": src_plane.data, "target": target}, src

    # ----------------------------------------------------------------- results
    def _show(self, job, result: dict, names: tuple[str, str], p: LocalisationParams) -> None:
        self.result = dict(result)
        rows = [(label.format(tol=p.tolerance, level=p.level), result[key]) for key, label in ROWS if key in result]
        t = self.table
        t.setRowCount(len(rows))
        for r, (label, value) in enumerate(rows):
            t.setItem(r, 0, QTableWidgetItem(label))
            item = QTableWidgetItem(_format(value))
            item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            t.setItem(r, 1, item)
        hit = "points at" if result["pointing"] else "misses"
        model = f" (curves: {job.model.name})" if job.model is not None else ""
        self.result_label.setText(f"<b>{names[0]}</b> {hit} <b>{names[1]}</b>; "
                                  f"{result['energy']:.1%} of its energy is inside.{model}")

    def table_values(self) -> dict[str, str]:
        """The table as {metric label: shown value} (for tests and copying)."""
        t = self.table
        return {t.item(r, 0).text(): t.item(r, 1).text() for r in range(t.rowCount())}

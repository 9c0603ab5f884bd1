"""Tiled heatmaps widget: per-class heatmaps over a whole (large) image, one layer per class."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QPushButton, QTableWidget, QTableWidgetItem

from ._base import GradCamWidget, ImageLayerPicker, notify_error, notify_info, section
from .layers import CLASS_COLORMAPS, layer_plane, replace_plugin_layers, tiled_layers

if TYPE_CHECKING:  # pragma: no cover
    import napari

METHODS = [("CAM", "cam"), ("Grad-CAM", "gradcam"), ("Grad-CAM++", "gradcam++")]
CLASS_MODES = [("top-k", "topk"), ("all", "all"), ("chosen", "chosen")]

#: results of a lazy (dask) input are computed in the worker when they fit in this many bytes
MATERIALISE_BYTES = 1 << 30


def _materialise(result):
    """Generator: compute a dask TiledHeatmaps chunk by chunk (progress per chunk) into numpy."""
    import dask

    heat, prob = result.heatmaps, result.probability_maps
    out_h = np.empty(heat.shape, np.float32)
    out_p = np.empty(prob.shape, np.float32)
    ys = np.cumsum((0,) + heat.chunks[1])
    xs = np.cumsum((0,) + heat.chunks[2])
    blocks = [(i, j) for i in range(len(ys) - 1) for j in range(len(xs) - 1)]
    yield 0, len(blocks)
    for n, (i, j) in enumerate(blocks):
        sl = (slice(None), slice(int(ys[i]), int(ys[i + 1])), slice(int(xs[j]), int(xs[j + 1])))
        # one compute for both: heat and probability come from the same task of the core
        out_h[sl], out_p[sl] = dask.compute(heat.blocks[:, i, j], prob.blocks[:, i, j], scheduler="synchronous")
        yield n + 1, len(blocks)
    result.heatmaps, result.probability_maps = out_h, out_p
    return result


def _tiled(state, data, tile, overlap, classes, method, bundle=None):
    from ..engine import iter_tiled_heatmaps

    with state.lock:  # ``bundle``: the model when the run started (a model switched mid-run is not used)
        bundle = bundle if bundle is not None else state.bundle
        result = yield from iter_tiled_heatmaps(bundle, data, tile=tile, overlap=overlap, classes=classes,
                                                method=method)
        if hasattr(result.heatmaps, "dask"):
            nbytes = 2 * np.prod(result.heatmaps.shape, dtype=np.int64) * 4
            if nbytes <= MATERIALISE_BYTES:
                result = yield from _materialise(result)
                result.breakdown  # noqa: B018 - computed here, off the GUI thread
            else:
                result.extra["lazy"] = True
        else:
            result.breakdown  # noqa: B018
    return result


def _pyramid(arr, min_size: int = 512) -> list:
    """A lazy multiscale list (strided views) for napari, for outputs too large to hold."""
    levels = [arr]
    while min(levels[-1].shape[-2:]) > 2 * min_size:
        levels.append(levels[-1][..., ::2, ::2])
    return levels


class TiledHeatmapsWidget(GradCamWidget):
    """Slide the shared model over a large image: one heatmap layer per class and the class breakdown."""

    what = "Tiled heatmaps"

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer)
        from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Select, SpinBox

        lay = self.layout()
        self.image = ImageLayerPicker(self.viewer)
        self.method = ComboBox(label="method", choices=METHODS, value="cam")
        self.tile = SpinBox(label="tile size", min=0, max=8192, step=16, value=0)
        self.tile.native.setSpecialValueText("model input size")
        self.tile.native.setToolTip("Tile side in image pixels (0: the model's input size). Tiles are resized "
                                    "to the model's input size.")
        self.overlap = FloatSpinBox(label="overlap", min=0.0, max=0.9, step=0.05, value=0.5)
        self.class_mode = ComboBox(label="classes", choices=CLASS_MODES, value="all")
        self.k = SpinBox(label="k", min=1, max=100, value=2)
        self.chosen = Select(label="chosen", choices=self._class_choices)
        self.keep = CheckBox(text="keep previous tiled maps", value=False)
        self.form = Container(widgets=[self.image.combo, self.method, self.tile, self.overlap, self.class_mode,
                                       self.k, self.chosen, self.keep], labels=True)
        self.form.native.layout().setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.form.native)
        self.run_button = QPushButton("Compute tiled heatmaps")
        self.run_button.clicked.connect(lambda: self.run())
        lay.addWidget(self.run_button)
        lay.addWidget(self._make_progress_row())
        lay.addWidget(section("Class breakdown"))
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        lay.addWidget(self.result_label)
        self.table = QTableWidget(0, 3)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setHorizontalHeaderLabels(["class", "area", "mean p"])
        self.table.horizontalHeaderItem(1).setToolTip("Share of the image where this class dominates.")
        self.table.horizontalHeaderItem(2).setToolTip("Mean probability of the class over the tiles.")
        self.table.setMinimumHeight(90)
        lay.addWidget(self.table, 1)
        self.result = None
        self.layers_added: list = []
        self._job_source = None  # the layer the running job computes the maps of
        self._source_removed = False  # ... and whether it was removed from the viewer meanwhile
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.class_mode.changed.connect(self._on_mode)
        self.state.model_changed.connect(self._on_model)
        self._on_model()

    def _class_choices(self, _widget=None) -> list[str]:
        return list(self.state.bundle.classes) if self.state.bundle is not None else []

    def _on_model(self, _bundle=None) -> None:
        self.chosen.reset_choices()
        if self.state.bundle is not None:
            self.k.max = self.state.bundle.n_classes
        self._on_mode()

    def _on_mode(self, *_args) -> None:
        mode = self.class_mode.value
        self.k.visible = mode == "topk"
        self.chosen.visible = mode == "chosen"

    def reset_choices(self, *_args) -> None:
        self.image.reset_choices()
        self.chosen.reset_choices()

    def run(self, layer=None, tile: int | None = None, overlap: float | None = None, classes=None,
            method: str | None = None, keep: bool | None = None):
        """Compute the tiled heatmaps of ``layer`` (default: the chosen one); returns the worker (or None).

        ``classes``: "all", an int (top-k) or a list of class names (sets the form).
        While a run is going on, another is refused (a notification) and the form is left as it is.
        """
        if self.refuse_if_busy():
            return None
        if tile is not None:
            self.tile.value = int(tile)
        if overlap is not None:
            self.overlap.value = float(overlap)
        if method is not None:
            self.method.value = method
        if keep is not None:
            self.keep.value = keep
        if classes is not None:
            if isinstance(classes, str) and classes == "all":
                self.class_mode.value = "all"
            elif isinstance(classes, int):
                self.class_mode.value = "topk"
                self.k.value = classes
            else:
                self.class_mode.value = "chosen"
                self.chosen.value = list(classes)
        if self.require_model() is None:
            return None
        layer = self.pick_image(layer)
        if layer is None:
            return None
        try:
            plane = layer_plane(self.viewer, layer, level=0)  # the finest level, read lazily by the core
        except Exception as e:  # noqa: BLE001
            notify_error(e, self.what)
            return None
        data = plane.data
        if layer.multiscale and not hasattr(data, "dask"):
            import dask.array as da

            data = da.from_array(data, chunks=(2048, 2048) + tuple(data.shape[2:]))
        mode = self.class_mode.value
        if mode == "topk":
            cls = int(self.k.value)
        elif mode == "chosen":
            cls = list(self.chosen.value)
            if not cls:
                notify_error("Choose at least one class (or use 'all' or 'top-k').")
                return None
        else:
            cls = "all"
        keep = bool(self.keep.value)
        model = self.state.name  # the model of the run's start: it computes the maps, and labels them
        self._job_source, self._source_removed = layer, False
        worker = self.start(_tiled, self.state, data, int(self.tile.value) or None, float(self.overlap.value), cls,
                            self.method.value, self.state.bundle,
                            on_returned=lambda r: self._add(r, plane, layer, keep, model), on_finished=self._job_over)
        if worker is None:
            self._job_over()
        return worker

    def _job_over(self) -> None:
        """The run is over (done, failed, cancelled or refused): forget its source layer."""
        self._job_source, self._source_removed = None, False

    def _on_layer_removed(self, event=None) -> None:
        """The running job's source layer was removed: stop the job at its next step (it adds nothing)."""
        layer = getattr(event, "value", None)
        if not self.busy or layer is None or layer is not self._job_source or self._source_removed:
            return
        self._source_removed = True
        notify_info(f"Layer {layer.name!r} was removed while its tiled heatmaps were computed; the run was "
                    "stopped and nothing was added.")
        try:
            self.cancel()
        except RuntimeError:  # the Qt widgets are gone (the viewer is closing)
            self._stop_requested = True

    def _add(self, result, plane, layer, keep: bool, model: str) -> None:
        removed = self._source_removed  # both reset by _job_over when the run finishes
        # the very layer the run started from (one deleted and re-added under its name is another image)
        if removed or not any(lyr is layer for lyr in self.viewer.layers):
            self.layers_added = []
            if not removed:  # else already said when it was removed
                notify_info(f"Layer {plane.name!r} was removed while its tiled heatmaps were computed; "
                            "nothing was added.")
            return
        lazy = bool(result.extra.get("lazy"))
        tuples = tiled_layers(result, plane, model) if not lazy else self._lazy_tuples(result, plane, model)
        self.layers_added = []
        self.layers_added = replace_plugin_layers(self.viewer, tuples, "tiled", plane.name, keep)
        self.result = result
        self.viewer.layers.selection.active = layer
        self.result_label.setText(f"{result.tiles} tiles of {result.tile} px (step {result.stride} px), "
                                  f"{result.method}, on {plane.name}")
        t = self.table
        t.clearContents()
        t.setRowCount(len(result.classes))
        breakdown = {} if lazy else result.breakdown
        probs = {} if lazy else result.probabilities
        for row, cls in enumerate(result.classes):
            ci = result.class_indices[row]
            item = QTableWidgetItem(f"■ {cls}")
            item.setForeground(QBrush(_cmap_colour(CLASS_COLORMAPS[ci % len(CLASS_COLORMAPS)])))
            t.setItem(row, 0, item)
            for col, value in ((1, breakdown.get(cls)), (2, probs.get(cls))):
                cell = QTableWidgetItem("—" if value is None else f"{value:.1%}")
                cell.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                t.setItem(row, col, cell)
        t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)

    @staticmethod
    def _lazy_tuples(result, plane, model):
        tuples = tiled_layers(result, plane, model)
        out = []
        for data, kwargs, ltype in tuples:
            kwargs["multiscale"] = True
            kwargs["metadata"]["lazy"] = True
            out.append((_pyramid(data), kwargs, ltype))
        return out


def _cmap_colour(name: str) -> QColor:
    """The bright end of a napari colormap, as a QColor."""
    try:
        from napari.utils.colormaps import ensure_colormap

        r, g, b, _ = ensure_colormap(name).map(np.array([1.0]))[0]
        return QColor(int(r * 255), int(g * 255), int(b * 255))
    except Exception:  # noqa: BLE001
        return QColor("white")

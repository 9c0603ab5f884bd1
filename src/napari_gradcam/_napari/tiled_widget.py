"""Tiled heatmaps widget: per-class heatmaps over a whole (large) image, one layer per class."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QPushButton, QTableWidget, QTableWidgetItem

from ..colours import class_colour
from ._base import GradCamWidget, layer_picker, picker_caption, section, wrapping_label
from .layers import block_mean, coarse_tiled_step, replace_plugin_layers, tiled_layers
from .form import build_form
from .params import CLASS_MODES, TILED_METHODS, TiledParams, adopt  # noqa: F401 - CLASS_MODES re-exported

if TYPE_CHECKING:  # pragma: no cover
    import napari

METHODS = TILED_METHODS

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


def _tiled(bundle, data, tile, overlap, classes, method, force=False):
    """Generator (the job): the tiled maps of ``data``, their breakdown (from the full-resolution
    probability maps), then the maps on the engine's blending grid (:func:`.layers.block_mean`): napari
    gets them coarse, placed with scale and translate, instead of image-sized copies."""
    from ..engine import iter_tiled_heatmaps

    result = yield from iter_tiled_heatmaps(bundle, data, tile=tile, overlap=overlap, classes=classes, method=method,
                                            force=force)
    if hasattr(result.heatmaps, "dask"):
        nbytes = 2 * np.prod(result.heatmaps.shape, dtype=np.int64) * 4
        if nbytes <= MATERIALISE_BYTES:
            result = yield from _materialise(result)
            result.breakdown  # noqa: B018 - computed here, off the GUI thread
        else:
            result.extra["lazy"] = True  # too large to hold: shown lazily, without a breakdown
    else:
        result.breakdown  # noqa: B018
    if not result.extra.get("lazy"):
        result.probabilities  # noqa: B018
    step = coarse_tiled_step(result)
    result.heatmaps = block_mean(result.heatmaps, step)
    result.probability_maps = None  # not shown; the breakdown above was computed from them
    result.extra["grid_step"] = step
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
        lay = self.layout()
        self.params = TiledParams()
        self.image = layer_picker(self.viewer, "image", tooltip="The (large) image layer to tile.")
        self.form, controls = build_form(self.params, owner=self, before=(self.image,))
        self.method, self.tile, self.overlap = controls["method"], controls["tile"], controls["overlap"]
        self.class_mode, self.k, self.chosen, self.keep = (controls[n] for n in ("class_mode", "k", "chosen", "keep"))
        lay.addWidget(self.form.native)
        lay.addWidget(picker_caption(self.image, "Tiles"))
        self.tile_hint = wrapping_label(rich=True)
        lay.addWidget(self.tile_hint)
        self.run_button = QPushButton("Compute tiled heatmaps")
        self.run_button.clicked.connect(lambda: self.run())
        self.add_run_row(self.run_button)
        lay.addWidget(section("Class breakdown"))
        self.result_label = wrapping_label()
        lay.addWidget(self.result_label)
        self.table = QTableWidget(0, 3)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setHorizontalHeaderLabels(["class", "area", "mean p"])
        self.table.horizontalHeaderItem(1).setToolTip("Share of the image where this class dominates.")
        self.table.horizontalHeaderItem(2).setToolTip("Mean probability of the class over the tiles.")
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(90)
        lay.addWidget(self.table, 1)
        self.result = None
        self.layers_added: list = []
        self.class_mode.changed.connect(self._on_mode)
        self.state.model_changed.connect(self._on_model)
        self._on_model()

    def _class_choices(self, _widget=None) -> list[str]:
        return list(self.state.bundle.classes) if self.state.bundle is not None else []

    def _on_model(self, _bundle=None) -> None:
        self.chosen.reset_choices()
        bundle = self.state.bundle
        if bundle is not None:
            self.k.max = bundle.n_classes
            from ..engine.tiling import default_tile

            tile = default_tile(bundle)
            recorded = (bundle.config.training or {}).get("source_size") == tile
            why = "training scale" if recorded else "input size (no training scale recorded)"
            self.tile_hint.setText(f"<small>tile size 0: {tile} px, the model's {why}</small>")
        else:
            self.tile_hint.setText("")
        self._on_mode()

    def _on_mode(self, *_args) -> None:
        mode = self.class_mode.value
        self.k.visible = mode == "topk"
        self.chosen.visible = mode == "chosen"

    def reset_choices(self, *_args) -> None:
        self.image.reset_choices()
        self.chosen.reset_choices()

    def run(self, layer=None, tile: int | None = None, overlap: float | None = None, classes=None,
            method: str | None = None, keep: bool | None = None, force: bool = False):
        """Compute the tiled heatmaps of ``layer`` (default: the chosen one); returns the worker (or None).

        ``classes``: "all", an int (top-k) or a list of class names (sets the form).  A plan estimated
        beyond the engine's time budget is not run: :meth:`ask` puts the estimate to the user, and a yes
        runs it again with ``force=True``.
        While a run is going on, another is refused (a notification) and the form is left as it is.
        """
        if self.refuse_if_busy():
            return None
        p = adopt(self.params, tile=tile, overlap=overlap, method=method, keep=keep, **self._class_overrides(classes))
        ready = self.plane_to_explain(layer, level=0)  # the finest level, read lazily by the core
        if ready is None:
            return None
        model, layer, plane = ready
        data = plane.data
        if layer.multiscale and not hasattr(data, "dask"):
            import dask.array as da

            data = da.from_array(data, chunks=(2048, 2048) + tuple(data.shape[2:]))
        cls = self._classes_of(p)
        if cls is None:
            return None
        rerun = []  # filled when the user confirms a plan over the time budget

        def over_budget(job, exc) -> bool:
            from ..errors import TimeBudgetError

            if not isinstance(exc, TimeBudgetError) or force:
                return False
            if self.ask(f"{exc.summary}. Compute the tiled heatmaps anyway?"):
                rerun.append(True)
            else:
                self.jobs.last_error = f"Not computed: {exc.summary}."
            return True

        def finished(job) -> None:
            if rerun:
                from qtpy.QtCore import QTimer

                QTimer.singleShot(0, lambda: self.run(layer, force=True))

        return self.jobs.start(
            _tiled, model.bundle, data, int(p.tile) or None, float(p.overlap), cls, p.method, force, model=model,
            sources=[layer], total=0, on_failure=over_budget, on_finished=finished,
            removed_message=f"Layer {plane.name!r} was removed while its tiled heatmaps were computed; the run "
                            "was stopped and nothing was added.",
            on_result=lambda job, r: self._add(job, r, plane, layer, p.keep))

    def ask(self, question: str) -> bool:
        """Yes or no from the user (a message box; tests replace it)."""
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self, "napari-gradcam", question,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    @staticmethod
    def _class_overrides(classes) -> dict:
        """The parameters of the engine's ``classes`` argument: "all", an int (top-k) or class names."""
        if classes is None:
            return {}
        if isinstance(classes, str) and classes == "all":
            return {"class_mode": "all"}
        if isinstance(classes, int):
            return {"class_mode": "topk", "k": classes}
        return {"class_mode": "chosen", "chosen": tuple(classes)}

    def _classes_of(self, p: TiledParams):
        """The engine's ``classes`` argument for the parameters (None + a notification when none is chosen)."""
        if p.class_mode == "topk":
            return int(p.k)
        if p.class_mode == "chosen":
            if not p.chosen:
                self.jobs.fail("Choose at least one class (or use 'all' or 'top-k').")
                return None
            return list(p.chosen)
        return "all"

    def _add(self, job, result, plane, layer, keep: bool) -> None:
        self.layers_added = []
        lazy = bool(result.extra.get("lazy"))
        step = int(result.extra.get("grid_step", 1))
        source_id = str(layer.unique_id)
        tuples = (tiled_layers(result, plane, job.model.name, step, source_id) if not lazy
                  else self._lazy_tuples(result, plane, job.model.name, step, source_id))
        self.layers_added = replace_plugin_layers(self.viewer, tuples, "tiled", plane.name, keep, layer)
        self.result = result
        self.viewer.layers.selection.active = layer
        self.result_label.setText(f"{result.tiles} tiles of {result.tile} px (step {result.stride} px), "
                                  f"{result.method}, on {plane.name}; model: {job.model.name}")
        self._fill_table(result, lazy)

    def _fill_table(self, result, lazy: bool) -> None:
        t = self.table
        t.clearContents()
        t.setRowCount(len(result.classes))
        breakdown = {} if lazy else result.breakdown
        probs = {} if lazy else result.probabilities
        for row, cls in enumerate(result.classes):
            ci = result.class_indices[row]
            item = QTableWidgetItem(f"■ {cls}")
            item.setForeground(QBrush(QColor(*[int(round(255 * c)) for c in class_colour(ci)])))
            t.setItem(row, 0, item)
            for col, value in ((1, breakdown.get(cls)), (2, probs.get(cls))):
                cell = QTableWidgetItem("—" if value is None else f"{value:.1%}")
                cell.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                t.setItem(row, col, cell)

    @staticmethod
    def _lazy_tuples(result, plane, model, step, source_id):
        tuples = tiled_layers(result, plane, model, step, source_id)
        out = []
        for data, kwargs, ltype in tuples:
            kwargs["multiscale"] = True
            kwargs["metadata"]["lazy"] = True
            out.append((_pyramid(data), kwargs, ltype))
        return out

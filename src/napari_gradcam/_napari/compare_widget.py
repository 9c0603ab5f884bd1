"""Compare methods: every method's map of one image as a grid of layers, and a table of their scores.

The Explain widget has a "Compare methods" button that calls :func:`start_compare`; the work is
:func:`napari_gradcam.compare.iter_compare_methods` in a worker, the layers are built by
:func:`compare_layers` (plain data, no viewer) and the scores shown in a :class:`CompareTable`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem

from .layers import HEATMAP_COLORMAP, TAG, ImagePlane, _place, replace_plugin_layers, signed_colormap

if TYPE_CHECKING:  # pragma: no cover
    from ..compare import MethodComparison

#: gap between grid cells, a fraction of the image's size
GAP = 0.05
COLUMNS = ("method", "deletion AUC", "insertion AUC", "randomisation corr.", "depends on model")


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
        meta = {TAG: "compare", "widget": "compare", "method": row.method, "target": result.target,
                "source": plane.name, "slice": list(plane.index), "model": model, "signed": row.signed,
                **{k: v for k, v in row.to_dict().items() if k not in ("method", "title", "family", "signed")}}
        kwargs = {"name": f"{row.title} {result.target} [{plane.label}]",
                  "colormap": signed_colormap() if row.signed else HEATMAP_COLORMAP,
                  "contrast_limits": (-1.0, 1.0) if row.signed else (0.0, 1.0),
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
        self.resizeColumnsToContents()
        self.setVisible(True)

    def cells(self) -> list[list[str]]:
        """The table's text, row by row (for tests and copying)."""
        return [[self.item(i, j).text() for j in range(self.columnCount())] for i in range(self.rowCount())]


def start_compare(widget, layer=None, methods: "Sequence[str] | str | None" = None):
    """Run a comparison for the Explain ``widget``'s image, class and layer; returns the worker (or None).

    The job runner captures the model and the source layer at the start; the maps replace the previous
    comparison's layers of the same source, and the table is filled when done.
    """
    if widget.refuse_if_busy():
        return None
    picked = widget.plane_to_explain(layer)
    if picked is None:
        return None
    from .explain_widget import ALL, PREDICTED
    from .params import snapshot

    model, layer, plane = picked
    p = snapshot(widget.params)
    target = None if p.target in (None, PREDICTED, ALL) else p.target  # one class for every method

    def done(job, result) -> None:
        widget.compare_layers_added = replace_plugin_layers(
            widget.viewer, compare_layers(result, plane, job.model.name), "compare", plane.name)
        widget.viewer.layers.selection.active = layer
        widget.compare_table.show_result(result)
        widget.comparison = result

    return widget.jobs.start(
        _compare_job, model.bundle, plane.data, methods, target, p.layer or None, model=model, sources=[layer],
        removed_message=f"Layer {plane.name!r} was removed while methods were compared; no map was added.",
        on_result=done, what="Comparing methods")

"""Classify widget: class probabilities of an image layer (its current slice, or every slice)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QBrush, QColor, QFont
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QProgressBar, QPushButton, QTableWidget, \
    QTableWidgetItem

from ._base import GradCamWidget, ImageLayerPicker, section
from .layers import layer_plane, stack_planes

if TYPE_CHECKING:  # pragma: no cover
    import napari

#: metadata key on the classified image layer
PREDICTION_KEY = "gradcam_prediction"

HIGHLIGHT = QColor(255, 170, 0, 90)


def _predict_plane(state, data):
    from ..inference import predict

    with state.lock:
        return predict(state.bundle, data)


def _predict_stack(state, data, indices, batch_size: int = 32):
    """Generator: probabilities of every plane, yielding (done, total) progress."""
    from ..inference import predict

    n = len(indices)
    out = []
    yield 0, n
    for i in range(0, n, batch_size):
        chunk = np.asarray(data[i: i + batch_size])
        with state.lock:
            out.append(np.atleast_2d(predict(state.bundle, list(chunk))))
        yield min(i + batch_size, n), n
    return np.concatenate(out) if out else np.zeros((0, state.bundle.n_classes), np.float32)


class ClassifyWidget(GradCamWidget):
    """Pick an image layer and classify it with the shared model."""

    what = "Classification"

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer)
        from magicgui.widgets import CheckBox, Container

        lay = self.layout()
        self.image = ImageLayerPicker(self.viewer)
        self.all_slices = CheckBox(text="every slice of a stack", value=False)
        self.all_slices.native.setToolTip("Classify all slices (a table) instead of the slice on screen.")
        form = Container(widgets=[self.image.combo, self.all_slices], labels=True)
        form.native.layout().setContentsMargins(0, 0, 0, 0)
        lay.addWidget(form.native)
        self.run_button = QPushButton("Classify")
        self.run_button.clicked.connect(lambda: self.run())
        lay.addWidget(self.run_button)
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        lay.addWidget(self.model_label)
        lay.addWidget(section("Probabilities"))
        self.result_label = QLabel("")
        self.result_label.setTextFormat(Qt.TextFormat.RichText)
        self.result_label.setWordWrap(True)
        lay.addWidget(self.result_label)
        self.table = QTableWidget(0, 2)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(118)  # a header and three rows
        lay.addWidget(self.table, 1)
        self.result: dict | None = None
        self.state.model_changed.connect(self._on_model)
        self._on_model(self.state.bundle)

    def _on_model(self, bundle) -> None:
        self.model_label.setText(f"model: {self.state.name}" if bundle is not None
                                 else "<i>no model: load one in the Model widget</i>")

    def reset_choices(self, *_args) -> None:
        self.image.reset_choices()

    # ----------------------------------------------------------------- run
    def run(self, layer=None, every_slice: bool | None = None):
        """Classify ``layer`` (default: the chosen one); returns the worker (or None)."""
        if every_slice is not None:
            self.all_slices.value = bool(every_slice)
        if self.require_model() is None:
            return None
        layer = self.pick_image(layer)
        if layer is None:
            return None
        try:
            if self.all_slices.value and layer.ndim > 2:
                data, indices = stack_planes(layer)
                return self.start(_predict_stack, self.state, data, indices,
                                  on_returned=lambda p: self._show_stack(layer, indices, p), progress_total=len(indices))
            plane = layer_plane(self.viewer, layer)
        except Exception as e:  # noqa: BLE001 - GradCamError from the layer
            from ._base import notify_error

            notify_error(e, self.what)
            return None
        return self.start(_predict_plane, self.state, plane.data,
                          on_returned=lambda p: self._show_one(layer, plane, p))

    # ----------------------------------------------------------------- results
    def _record(self, layer, entry: dict) -> None:
        meta = dict(layer.metadata)
        meta[PREDICTION_KEY] = entry
        layer.metadata = meta
        self.result = entry

    def _show_one(self, layer, plane, probs) -> None:
        classes = self.state.bundle.classes if self.state.bundle is not None else [str(i) for i in range(len(probs))]
        probs = np.asarray(probs, dtype=float)
        top = int(np.argmax(probs))
        self._record(layer, {
            "classes": list(classes), "probabilities": [float(p) for p in probs], "predicted": classes[top],
            "score": float(probs[top]), "slice": list(plane.index), "model": self.state.name,
        })
        where = f" (slice {', '.join(map(str, plane.index))})" if plane.index else ""
        self.result_label.setText(f"<b>{classes[top]}</b> {probs[top]:.1%} — {plane.name}{where}")
        t = self.table
        t.clear()
        t.setColumnCount(2)
        t.setRowCount(len(classes))
        t.setHorizontalHeaderLabels(["class", "probability"])
        order = np.argsort(-probs)
        for row, k in enumerate(order):
            item = QTableWidgetItem(classes[k])
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setValue(int(round(probs[k] * 1000)))
            bar.setFormat(f"{probs[k]:.1%}")
            bar.setTextVisible(True)
            if k == top:
                font = QFont()
                font.setBold(True)
                item.setFont(font)
                item.setBackground(QBrush(HIGHLIGHT))
            t.setItem(row, 0, item)
            t.setCellWidget(row, 1, bar)
        t.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        t.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)

    def _show_stack(self, layer, indices, probs) -> None:
        classes = self.state.bundle.classes
        probs = np.asarray(probs, dtype=float)
        top = probs.argmax(axis=1)
        self._record(layer, {
            "classes": list(classes), "probabilities": probs.round(6).tolist(),
            "predicted": [classes[k] for k in top], "slices": [list(ix) for ix in indices], "model": self.state.name,
        })
        counts = np.bincount(top, minlength=len(classes))
        self.result_label.setText(f"{len(indices)} slices of {layer.name}: " + ", ".join(
            f"<b>{c}</b> {n}" for c, n in zip(classes, counts) if n))
        t = self.table
        t.clear()
        t.setColumnCount(len(classes) + 2)
        t.setRowCount(len(indices))
        t.setHorizontalHeaderLabels(["slice", *classes, "predicted"])
        font = QFont()
        font.setBold(True)
        for row, (ix, p, k) in enumerate(zip(indices, probs, top)):
            t.setItem(row, 0, QTableWidgetItem(",".join(map(str, ix))))
            for c, v in enumerate(p):
                item = QTableWidgetItem(f"{v:.3f}")
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if c == k:
                    item.setFont(font)
                    item.setBackground(QBrush(HIGHLIGHT))
                t.setItem(row, 1 + c, item)
            t.setItem(row, len(classes) + 1, QTableWidgetItem(classes[k]))
        t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)

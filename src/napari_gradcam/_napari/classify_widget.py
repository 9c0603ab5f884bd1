"""Classify widget: class probabilities of an image layer (its current slice, or every slice)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QBrush, QColor, QFont
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QProgressBar, QPushButton, QTableWidget, QTableWidgetItem

from ._base import GradCamWidget, error_message, layer_picker, notify_error, picker_caption, section, wrapping_label
from .layers import layer_plane, stack_planes
from .form import build_form
from .params import ClassifyParams, adopt

if TYPE_CHECKING:  # pragma: no cover
    import napari

#: metadata key on the classified image layer
PREDICTION_KEY = "gradcam_prediction"

HIGHLIGHT = QColor(255, 170, 0, 90)


def _predict_plane(bundle, data):
    from ..inference import predict

    return predict(bundle, data)


def _predict_stack(bundle, data, indices, batch_size: int = 32):
    """Generator: probabilities of every plane, yielding (done, total) progress."""
    from ..inference import predict

    n = len(indices)
    out = []
    yield 0, n
    for i in range(0, n, batch_size):
        chunk = np.asarray(data[i: i + batch_size])
        out.append(np.atleast_2d(predict(bundle, list(chunk))))
        yield min(i + batch_size, n), n
    return np.concatenate(out) if out else np.zeros((0, bundle.n_classes), np.float32)


class ClassifyWidget(GradCamWidget):
    """Pick an image layer and classify it with the shared model."""

    what = "Classification"

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer)
        lay = self.layout()
        self.params = ClassifyParams()
        self.image = layer_picker(self.viewer, "image", tooltip="The image layer to classify (the slice on screen).")
        self.form, controls = build_form(self.params, before=(self.image,))
        self.all_slices = controls["every_slice"]
        lay.addWidget(self.form.native)
        lay.addWidget(picker_caption(self.image, "Classifies"))
        self.run_button = QPushButton("Classify")
        self.run_button.clicked.connect(lambda: self.run())
        self.add_run_row(self.run_button)
        self.model_label = wrapping_label(rich=True)
        lay.addWidget(self.model_label)
        lay.addWidget(section("Probabilities"))
        self.result_label = wrapping_label(rich=True)
        lay.addWidget(self.result_label)
        self.table = QTableWidget(0, 2)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setHorizontalHeaderLabels(["class", "probability"])  # never "1", "2" on an empty table
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
        """Classify ``layer`` (default: the chosen one) with the model of this moment; returns the worker
        (or None)."""
        if self.refuse_if_busy():
            return None
        p = adopt(self.params, every_slice=None if every_slice is None else bool(every_slice))
        ready = self.model_and_image(layer)
        if ready is None:
            return None
        model, layer = ready
        removed = f"Layer {layer.name!r} was removed while it was being classified; nothing was recorded."
        try:
            if p.every_slice and layer.ndim > 2:
                data, indices = stack_planes(layer)
                return self.jobs.start(_predict_stack, model.bundle, data, indices, model=model, sources=[layer],
                                       removed_message=removed, total=len(indices),
                                       on_result=lambda job, probs: self._show_stack(job, layer, indices, probs))
            plane = layer_plane(self.viewer, layer)
        except Exception as e:  # noqa: BLE001 - GradCamError from the layer
            self.last_error = error_message(e, self.what)
            notify_error(e, self.what)
            return None
        return self.jobs.start(_predict_plane, model.bundle, plane.data, model=model, sources=[layer],
                               removed_message=removed,
                               on_result=lambda job, probs: self._show_one(job, layer, plane, probs))

    # ----------------------------------------------------------------- results
    def _record(self, layer, entry: dict) -> None:
        meta = dict(layer.metadata)
        meta[PREDICTION_KEY] = entry
        layer.metadata = meta
        self.result = entry

    def _show_one(self, job, layer, plane, probs) -> None:
        """The probabilities of the model the run started with, under its own class names."""
        classes = list(job.model.bundle.classes)
        probs = np.asarray(probs, dtype=float)
        top = int(np.argmax(probs))
        self._record(layer, {
            "classes": classes, "probabilities": [float(p) for p in probs], "predicted": classes[top],
            "score": float(probs[top]), "slice": list(plane.index), "model": job.model.name,
        })
        where = f" (slice {', '.join(map(str, plane.index))})" if plane.index else ""
        self.result_label.setText(f"<b>{classes[top]}</b> {probs[top]:.1%} — {plane.name}{where}<br>"
                                  f"<small>model: {job.model.name}</small>")
        t = self.table
        t.clear()
        t.setColumnCount(2)
        t.setRowCount(len(classes))
        t.setHorizontalHeaderLabels(["class", "probability"])
        for row, k in enumerate(np.argsort(-probs)):
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

    def _show_stack(self, job, layer, indices, probs) -> None:
        """One row per slice: slice, predicted (next to it, always in view), then each class's probability."""
        classes = list(job.model.bundle.classes)
        probs = np.asarray(probs, dtype=float)
        top = probs.argmax(axis=1)
        self._record(layer, {
            "classes": classes, "probabilities": probs.round(6).tolist(),
            "predicted": [classes[k] for k in top], "slices": [list(ix) for ix in indices], "model": job.model.name,
        })
        counts = np.bincount(top, minlength=len(classes))
        self.result_label.setText(f"{len(indices)} slices of {layer.name}: " + ", ".join(
            f"<b>{c}</b> {n}" for c, n in zip(classes, counts) if n) + f"<br><small>model: {job.model.name}</small>")
        t = self.table
        t.clear()
        t.setColumnCount(len(classes) + 2)
        t.setRowCount(len(indices))
        t.setHorizontalHeaderLabels(["slice", "predicted", *classes])
        font = QFont()
        font.setBold(True)
        for row, (ix, p, k) in enumerate(zip(indices, probs, top)):
            t.setItem(row, 0, QTableWidgetItem(",".join(map(str, ix))))
            predicted = QTableWidgetItem(classes[k])
            predicted.setFont(font)
            t.setItem(row, 1, predicted)
            for c, v in enumerate(p):
                item = QTableWidgetItem(f"{v:.3f}")
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if c == k:
                    item.setFont(font)
                    item.setBackground(QBrush(HIGHLIGHT))
                t.setItem(row, 2 + c, item)
        t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)

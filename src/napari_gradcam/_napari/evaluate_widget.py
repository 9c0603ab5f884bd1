"""Evaluate widget: the viewer's model on a labelled folder, every figure with its 95 % interval, per subgroup.

The core is :func:`napari_gradcam.stats.iter_evaluate_folder` (the same figures as ``napari-gradcam
evaluate``): it runs in the background through the job runner with a progress bar and Cancel. The
table has one row for the whole set and one per subgroup (a CSV column, or an audit folder's clusters);
each cell is the estimate over its interval (``96.7`` / ``94.6–98.8``); a figure below the whole set's
interval is marked ``!`` and tinted.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QPushButton, QTableWidget, QTableWidgetItem

from ._base import GradCamWidget, section, wrapping_label
from .form import build_form
from .params import EvaluateParams, adopt

if TYPE_CHECKING:  # pragma: no cover
    import napari

#: the tint of a figure below the whole set's interval (white text stays readable on it)
FLAG_COLOUR = "#a0522d"


class EvaluateWidget(GradCamWidget):
    """Evaluate the viewer's model on a folder of class subfolders: a table of figures with intervals."""

    what = "Evaluating"

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer)
        lay = self.layout()
        self.params = EvaluateParams()
        self.form, controls = build_form(self.params, owner=self)
        self.folder, self.groups, self.group_column, self.bootstrap = controls.values()
        lay.addWidget(self.form.native)
        self.run_button = QPushButton("Evaluate")
        self.run_button.clicked.connect(lambda: self.run())
        lay.addWidget(self.run_button)
        lay.addWidget(self._make_progress_row())
        lay.addWidget(section("Figures (%; ROC AUC 0–1) and 95 % intervals"))
        self.summary = wrapping_label(rich=True)
        lay.addWidget(self.summary)
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(140)
        self.table.setWordWrap(True)
        lay.addWidget(self.table, 1)
        #: the last result of :func:`~napari_gradcam.stats.iter_evaluate_folder`
        self.result: dict[str, Any] | None = None

    def run(self, folder=None, groups=None, group_column: str | None = None, bootstrap: int | None = None):
        """Evaluate on ``folder`` (default: the form's); returns the worker, or None when refused."""
        from ..stats import iter_evaluate_folder

        if self.refuse_if_busy():
            return None
        p = adopt(self.params, folder=_text(folder), groups=_text(groups), group_column=group_column,
                  bootstrap=bootstrap)  # the form shows what the run uses
        folder = Path(p.folder)
        groups = p.groups or None
        column = p.group_column.strip() or None
        resamples = int(p.bootstrap)
        if str(folder) in ("", ".") or not folder.is_dir():
            self.jobs.fail("Choose a data folder (one sub-folder of images per class).")
            return None
        model = self.jobs.capture_model()
        if model is None:
            return None
        return self.jobs.start(iter_evaluate_folder, model.bundle, folder, groups=groups, group_column=column,
                               bootstrap=resamples, model=model,
                               on_result=lambda job, result: self.show_result(result, job.model.name))

    # ----------------------------------------------------------------- results
    def show_result(self, result: dict[str, Any], model_name: str = "") -> None:
        """Fill the table: one row per figure, one column for the whole set and one per subgroup; each cell
        the estimate over its interval; a figure below the whole set's interval marked ``!`` and tinted."""
        from ..stats.bootstrap import figure_name, figure_value
        from ..stats.subgroups import table_figures

        self.result = result
        report = result["report"]
        sub = result.get("subgroups")
        groups = [dict(report, group="all images", below=[])] + (sub["groups"] if sub else [])
        figures = table_figures(report["classes"])
        t = self.table
        t.clear()
        t.setRowCount(1 + len(figures))
        t.setColumnCount(1 + len(groups))
        t.setHorizontalHeaderLabels([""] + [str(g["group"]) for g in groups])
        t.setItem(0, 0, QTableWidgetItem("images"))
        for r, (_, _, heading) in enumerate(figures, start=1):
            t.setItem(r, 0, QTableWidgetItem(heading.removesuffix(" %").replace("balanced", "bal. acc.")))
        for c, g in enumerate(groups, start=1):
            t.setItem(0, c, _right(str(g["n"])))
            for r, (key, cls, _) in enumerate(figures, start=1):
                flagged = figure_name(key, cls) in g["below"]
                item = _right(_cell(figure_value(g, key, cls), figure_value(g, key, cls, "_ci"), key != "roc_auc",
                                    flagged))
                if flagged:
                    item.setBackground(QBrush(QColor(FLAG_COLOUR)))
                    item.setToolTip("Below the whole set's 95 % interval.")
                t.setItem(r, c, item)
        t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        t.resizeRowsToContents()
        self.summary.setText(_summary(report, sub, model_name))

    def table_rows(self) -> list[list[str]]:
        """The table's cells, row by row, with the header first (a cell's two lines joined by a space)."""
        t = self.table
        header = [t.horizontalHeaderItem(c).text() for c in range(t.columnCount())]
        return [header] + [[t.item(r, c).text().replace("\n", " ") for c in range(t.columnCount())]
                           for r in range(t.rowCount())]


def _text(path) -> "str | None":
    """A path argument as the parameters hold it (None stays None: the form's value)."""
    return None if path is None else str(path)


def _cell(value: "float | None", ci, pct: bool, flagged: bool) -> str:
    """Two short lines: the estimate (``!`` when flagged) over its interval ``low–high``."""
    if value is None:
        return "n/a"
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.3f}")
    return f(value) + (" !" if flagged else "") + (f"\n{f(ci[0])}–{f(ci[1])}" if ci is not None else "")


def _right(text: str) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return item


def _summary(report: dict[str, Any], sub: "dict | None", model_name: str) -> str:
    b = report.get("bootstrap")
    how = (f"{b['resamples']} resamples of {b['units']} {b['unit']}s" if b else "no intervals (0 resamples)")
    text = f"<b>{model_name}</b>: {report['n']} images; {how}."
    if sub:
        flagged = [g["group"] for g in sub["groups"] if g["below"]]
        text += (f" {len(flagged)} of {len(sub['groups'])} subgroups ({sub['column']}) below the whole set"
                 + (f": {', '.join(map(str, flagged[:5]))}." if flagged else "."))
    return text

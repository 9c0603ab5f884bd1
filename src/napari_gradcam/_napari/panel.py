"""One panel, one tab per task: every napari-gradcam widget in a window of 1280 x 800.

:data:`TABS` lists the tabs in order; each entry is (tab title, module in this package, widget class).
To add a tab, add its line to :data:`TABS`; the widget takes the viewer (``napari_viewer``) like every
other.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, NamedTuple

from qtpy.QtWidgets import QTabWidget, QVBoxLayout, QWidget

from .state import unwrap

if TYPE_CHECKING:  # pragma: no cover
    import napari

log = logging.getLogger("napari_gradcam")

#: the panel's display name in napari.yaml (Plugins menu; ``add_plugin_dock_widget("napari-gradcam", PANEL)``)
PANEL = "napari-gradcam"


class Tab(NamedTuple):
    title: str
    module: str
    widget: str


#: the tabs, in order: one line per widget
TABS = (
    Tab("Model", "model_widget", "ModelWidget"),
    Tab("Classify", "classify_widget", "ClassifyWidget"),
    Tab("Explain", "explain_widget", "ExplainWidget"),
    Tab("Compare", "compare_widget", "CompareWidget"),
    Tab("Tiled", "tiled_widget", "TiledHeatmapsWidget"),
    Tab("Features", "features_widget", "FeatureMapsWidget"),
    Tab("Train", "train_widget", "TrainWidget"),
    Tab("Outline", "localisation_widget", "LocalisationWidget"),
    Tab("Evaluate", "evaluate_widget", "EvaluateWidget"),
    Tab("Audit", "audit_widget", "AuditWidget"),
)


def tab_classes(tabs=TABS) -> list[tuple[str, type]]:
    """(title, widget class) of each tab."""
    return [(tab.title, getattr(importlib.import_module(f"{__package__}.{tab.module}"), tab.widget)) for tab in tabs]


class GradCamPanel(QWidget):
    """Every napari-gradcam widget of one viewer as a tab (they share the viewer's model).

    ``panel.widgets`` maps each tab's title in lower case ("model", "explain", ...) to its widget;
    :meth:`show_tab` brings one to the front.
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.setUsesScrollButtons(True)
        self.tabs.tabBar().setExpanding(False)
        self.tabs.setStyleSheet("QTabBar::tab { padding: 3px 6px; min-width: 0px; }")
        lay.addWidget(self.tabs)
        self.widgets: dict[str, QWidget] = {}
        for title, cls in tab_classes():
            widget = cls(napari_viewer)
            self.widgets[title.lower()] = widget
            self.tabs.addTab(widget, title)
            tip = (cls.__doc__ or "").strip().splitlines()
            if tip:
                self.tabs.setTabToolTip(self.tabs.count() - 1, tip[0])

    def show_tab(self, name: str) -> QWidget:
        """Bring the tab called ``name`` (any case) to the front and return its widget."""
        widget = self.widgets[name.lower()]
        self.tabs.setCurrentWidget(widget)
        return widget

    def reset_choices(self, *_args) -> None:
        for widget in self.widgets.values():
            reset = getattr(widget, "reset_choices", None)
            if reset is not None:
                reset()

    def minimumSizeHint(self):  # noqa: N802 - Qt name
        from qtpy.QtCore import QSize

        # as wide as the widest tab's form or the tab bar, whichever is wider; no taller than a tab's footer
        # and tab bar need (the bodies scroll)
        hint = super().minimumSizeHint()
        bar = self.tabs.tabBar().sizeHint().width()
        return QSize(max(hint.width(), min(bar, 560)), hint.height())

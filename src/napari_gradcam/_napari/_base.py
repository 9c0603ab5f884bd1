"""What every widget shares: the viewer and its model, a scrolling body, the job runner, layer pickers.

Each widget's controls live in a scroll area (``self.layout()`` is the body's layout), so a dock is
never squeezed below its controls' sizes and the window never grows past the screen, however many
widgets are docked.  Work runs through :class:`~.jobs.JobRunner` (``self.jobs``): ``widget.busy``,
``widget.worker``, ``widget.last_error`` and ``widget.cancel()`` are the runner's.  Layer pickers are
magicgui's own (``create_widget(annotation=napari.layers.Image)``) with the plugin's choices and a
follower that keeps them current.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Callable

import numpy as np

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, QScrollArea, QSizePolicy, QVBoxLayout, QWidget,
)

from .jobs import JobRunner, error_message, notify_error, notify_info  # noqa: F401 - re-exported
from .state import get_state, unwrap

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["GradCamWidget", "section", "layer_picker", "notify_error", "notify_info", "error_message"]


class GradCamWidget(QWidget):
    """Base class: the viewer, its shared :class:`~.state.ModelState`, a scrolling body and a job runner."""

    #: title used in notifications ("Explaining failed ...")
    what = "The operation"

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        self.state = get_state(self.viewer)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll = _Scroll()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.body = _Body()
        body = QVBoxLayout(self.body)
        body.setContentsMargins(6, 6, 6, 6)
        body.setSpacing(4)
        self.scroll.setWidget(self.body)
        outer.addWidget(self.scroll, 1)
        #: the run buttons and the progress row: below the scrolling body, always in view
        self.footer = QWidget()
        self.footer.setObjectName("gradcam_footer")
        foot = QVBoxLayout(self.footer)
        foot.setContentsMargins(6, 2, 6, 6)
        foot.setSpacing(2)
        outer.addWidget(self.footer, 0)
        self.jobs = JobRunner(self.viewer, self.state, self.what, on_busy=self._on_busy)
        self._widget_error: str | None = None
        self._heights_held = False

    def layout(self):  # noqa: D401 - Qt name
        """The layout of the widget's scrolling body (where its controls go)."""
        return self.body.layout()

    # ----------------------------------------------------------------- the runner's state
    @property
    def busy(self) -> bool:
        """True while this widget's job runs (and until its results were added)."""
        return self.jobs.busy

    @property
    def worker(self):
        """The running job's worker (None when idle)."""
        return self.jobs.worker

    @property
    def last_error(self) -> str | None:
        """The last run's error sentence (None after a run that went well)."""
        return self.jobs.last_error

    @last_error.setter
    def last_error(self, message: str | None) -> None:
        self.jobs.last_error = message

    def cancel(self) -> None:
        """Stop the running job between two of its steps (a no-op when idle)."""
        self.jobs.cancel()

    def refuse_if_busy(self, what: str | None = None) -> bool:
        """True (and a notification) while a run is going on: call first in ``run()``."""
        return self.jobs.refuse_if_busy(what)

    def start(self, func, *args, on_returned=None, on_yielded=None, on_finished=None, what=None,
              progress_total: int = 0, **kwargs):
        """``self.jobs.start`` in the call style the widgets used before the job runner (callbacks without
        the job), for code written against it; it captures nothing: prefer ``self.jobs.start``."""
        return self.jobs.start(
            func, *args, what=what, total=progress_total,
            on_result=None if on_returned is None else (lambda _job, result: on_returned(result)),
            on_event=None if on_yielded is None else (lambda _job, value: on_yielded(value)),
            on_finished=None if on_finished is None else (lambda _job: on_finished()), **kwargs)

    def _on_busy(self, busy: bool) -> None:
        for button in (getattr(self, "run_button", None), *getattr(self, "busy_buttons", ())):
            if button is not None:
                button.setEnabled(not busy)

    def add_run_row(self, *buttons: QWidget, progress: bool = True) -> None:
        """Put ``buttons`` (the first is the run button, stretched) in one row of the footer, which stays in
        view below the scrolling body, and under them a progress bar with Cancel (``progress``)."""
        row = QWidget()
        lay = QHBoxLayout(row)
        lay.setContentsMargins(0, 0, 0, 0)
        for i, button in enumerate(buttons):
            lay.addWidget(button, 2 if i == 0 else 1)
        self.footer.layout().addWidget(row)
        if progress:
            self.footer.layout().addWidget(self._make_progress_row())

    def hold_size_hints(self) -> None:
        """Give every line edit, combo box and spin box a minimum height of its size hint: napari's
        stylesheet lets them shrink (an 18 px line edit for a 21 px hint) when space is short."""
        hold_size_hints(self)
        self._heights_held = True

    def showEvent(self, event) -> None:  # noqa: N802 - Qt name
        if not self._heights_held:
            self.hold_size_hints()
        super().showEvent(event)

    def _make_progress_row(self) -> QWidget:
        """A QProgressBar with a Cancel button, driven by the job runner."""
        row = QWidget()
        lay = QHBoxLayout(row)
        lay.setContentsMargins(0, 0, 0, 0)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setFormat("")  # idle: nothing to say (the job runner sets the text of each state)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        lay.addWidget(self.progress_bar, 1)
        lay.addWidget(self.cancel_button)
        self.jobs.progress_bar, self.jobs.cancel_button = self.progress_bar, self.cancel_button
        return row

    # ----------------------------------------------------------------- inputs of a run
    def pick_image(self, layer=None):
        """``layer`` (checked, and shown in the picker) or the picker's layer; None + a notification."""
        from napari.layers import Image

        from .layers import is_plugin_layer, source_layers

        if layer is None:
            layer = self.image.value
            if layer is None or not any(layer is x for x in self.viewer.layers):
                self.jobs.fail("There is no image layer to analyse: open an image (or a sample: File > Open Sample)."
                               if not source_layers(self.viewer) else "Choose an image layer first.")
                return None
            return layer
        name = getattr(layer, "name", str(layer))
        if not isinstance(layer, Image):
            kind = type(layer).__name__.lower()
            self.jobs.fail(f"Layer {name!r} is a {kind} layer, not an image layer; pick an image layer.")
        elif is_plugin_layer(layer):
            self.jobs.fail(f"Layer {name!r} is a result of this plugin; pick the image it was computed from.")
        elif not any(layer is x for x in self.viewer.layers):
            self.jobs.fail(f"Layer {name!r} is not in this viewer.")
        else:
            self.image.reset_choices()
            self.image.value = layer
            return layer
        return None

    def model_and_image(self, layer=None):
        """(model snapshot, image layer) when a model and an image layer are ready (see :meth:`pick_image`);
        else a notification and None."""
        model = self.jobs.capture_model()
        if model is None:
            return None
        layer = self.pick_image(layer)
        if layer is None:
            return None
        return model, layer

    def plane_to_explain(self, layer=None, level: int | None = None):
        """(model snapshot, layer, its plane on screen) when a model and an image layer are ready; else a
        notification and None.  ``level``: the multiscale level (default: see ``layers.layer_plane``)."""
        ready = self.model_and_image(layer)
        if ready is None:
            return None
        model, layer = ready
        from .layers import layer_plane

        try:
            return model, layer, layer_plane(self.viewer, layer, level=level)
        except Exception as e:  # noqa: BLE001 - any failure to read the layer is the user's to see
            self.jobs.last_error = error_message(e, self.what)
            notify_error(e, self.what)
            return None

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt name
        self.cancel()
        super().closeEvent(event)


class FollowsTargetLayer:
    """For a widget with a model-layer choice ``self.layer``: it shows the model's target layer whenever
    that changes (connect ``state.target_layer_changed`` to :meth:`_on_target_layer`)."""

    def _on_target_layer(self, name: str) -> None:
        if name and name in self.layer.choices:
            self.layer.value = name


class _Scroll(QScrollArea):
    """A scroll area as wide as its body and a vertical scroll bar (it scrolls up and down only), and
    as short as the dock needs."""

    def minimumSizeHint(self):  # noqa: N802 - Qt name
        from qtpy.QtCore import QSize

        body = self.widget()
        width = body.minimumSizeHint().width() if body is not None else 0
        bar = self.verticalScrollBar().sizeHint().width()
        return QSize(width + bar + 2 * self.frameWidth(), super().minimumSizeHint().height())


class _Body(QWidget):
    """The scrolling body: never shorter than its preferred height (the scroll area scrolls instead), so
    no control is squeezed below its size hint (napari's stylesheet lets spin boxes shrink to 20 px)."""

    def minimumSizeHint(self):  # noqa: N802 - Qt name
        from qtpy.QtCore import QSize

        return QSize(super().minimumSizeHint().width(), self.sizeHint().height())


def camera_of(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def section(title: str) -> QLabel:
    """A bold section heading."""
    label = QLabel(f"<b>{title}</b>")
    label.setTextFormat(Qt.TextFormat.RichText)
    return label


def wrapping_label(text: str = "", rich: bool = False) -> QLabel:
    """A QLabel that wraps and may be as narrow as the dock."""
    label = QLabel(text)
    label.setWordWrap(True)
    if rich:
        label.setTextFormat(Qt.TextFormat.RichText)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return label


# ----------------------------------------------------------------------------- sizes
def hold_size_hints(widget: QWidget) -> None:
    """Every line edit, combo box, spin box and push button under ``widget`` at least as tall as its size hint."""
    from qtpy.QtWidgets import QAbstractSpinBox, QComboBox, QLineEdit

    for kind in (QLineEdit, QComboBox, QAbstractSpinBox, QPushButton):
        for child in widget.findChildren(kind):
            if isinstance(child, QLineEdit) and isinstance(child.parent(), (QComboBox, QAbstractSpinBox)):
                continue  # the editor inside a combo / spin box: its owner holds the height
            child.setMinimumHeight(max(child.minimumHeight(), child.sizeHint().height()))


# ----------------------------------------------------------------------------- layer pickers
def layer_picker(viewer: "napari.Viewer", label: str, eligible: Callable | None = None, annotation=None,
                 tooltip: str = "", prefer: Callable | None = None, group: Callable | None = None,
                 relate: Callable | None = None):
    """magicgui's layer ComboBox (``create_widget(annotation=napari.layers.Image)``) over ``eligible(viewer)``
    (default: the images this plugin did not make), kept current as layers come, go and are renamed.

    It follows the viewer's active layer when that is eligible and ``prefer(layer)`` (default: any),
    unless ``group`` (a key, e.g. the run that made a layer) puts it with the layer already chosen;
    when a layer with ``prefer(layer)`` is added, the first preferred choice is taken at once.
    An active layer that is not eligible (a Labels outline, a heatmap) is passed to ``relate(layer)``,
    which names the eligible layer to take instead (None: keep the choice).  The default picker of
    images relates to :func:`image_of` and takes each new image as it is added: it always shows the image
    one is looking at, never silently the first one.
    """
    from magicgui.widgets import create_widget
    from napari.layers import Image

    from .layers import source_layers

    image_picker = eligible is None
    eligible = eligible or source_layers
    if relate is None and image_picker:
        relate = lambda layer: image_of(viewer, layer)  # noqa: E731
    combo = create_widget(annotation=annotation or Image, label=label, options={
        "choices": lambda _w=None: [(layer.name, layer) for layer in eligible(viewer)], "nullable": False})
    if tooltip:
        combo.native.setToolTip(tooltip)
    combo._gradcam_follower = _LayerFollower(viewer, combo, eligible, prefer, group, relate,
                                             newest=image_picker)  # lives as long as the combo
    return combo


def _spatial_extent(layer) -> np.ndarray:
    """(2, 2) world bounds (min, max) of the layer's last two axes."""
    return np.asarray(layer.extent.world, float)[:, -2:]


def same_extent(a, b) -> bool:
    """Whether two layers cover the same place in the world (their last two axes, within half a pixel)."""
    tol = 0.5 * float(np.min(np.abs(np.asarray(a.scale, float)[-2:])))
    return bool(np.allclose(_spatial_extent(a), _spatial_extent(b), atol=tol))


def image_of(viewer: "napari.Viewer", layer):
    """The image (not made by this plugin) that ``layer`` belongs to, or the newest image.

    A result of this plugin names its source (``metadata["source_id"]``, the very layer); a sample's
    outline names its image (``metadata["image"]``); a Labels or Shapes layer over exactly one image's
    place belongs to it.  Anything else: the newest image (the last in the layer list); None without images.
    """
    from .layers import source_layers

    images = source_layers(viewer)
    if not images:
        return None
    meta = getattr(layer, "metadata", None) or {}
    wanted = meta.get("source_id")
    found = [x for x in images if wanted and str(x.unique_id) == str(wanted)]
    if not found and meta.get("image"):
        found = [x for x in images if x.name == meta["image"]]
    if not found and layer is not None and not any(layer is x for x in images):
        try:
            found = [x for x in images if same_extent(x, layer)]
        except Exception:  # noqa: BLE001 - an empty Shapes layer has no extent worth comparing
            found = []
    return (found or images)[-1]


def picker_caption(combo, verb: str) -> QLabel:
    """A line under a picker that says which layer a run will use: "Explains <b>xray</b> (224 x 224)"."""
    label = wrapping_label(rich=True)

    def update(*_args) -> None:
        layer = combo.value
        try:
            if layer is None:
                label.setText(f"<small>{verb}: <i>no image layer yet (open one, or File > Open Sample)</i></small>")
                return
            shape = tuple(layer.data[0].shape if layer.multiscale else layer.data.shape)
            hw = shape[-3:-1] if layer.rgb else shape[-2:]
            where = ", the slice on screen" if int(layer.ndim) > 2 else ""
            label.setText(f"<small>{verb}: <b>{escape(layer.name)}</b> ({hw[0]} x {hw[1]} px{where})</small>")
        except RuntimeError:  # the Qt label is gone
            pass

    combo.changed.connect(update)
    combo._gradcam_caption = (label, update)
    update()
    return label


class _LayerFollower:
    """Keeps a layer ComboBox's choices current and its value on the active (or preferred) layer."""

    def __init__(self, viewer, combo, eligible: Callable, prefer: Callable | None, group: Callable | None = None,
                 relate: Callable | None = None, newest: bool = False) -> None:
        self.viewer, self.combo, self.eligible = viewer, combo, eligible
        self.group, self.relate, self.newest = group, relate, newest
        self.prefer = prefer or _any
        self.new_ones = prefer is not None  # a new preferred layer is chosen when it is added
        events = viewer.layers.events
        events.inserted.connect(self._on_inserted)
        events.removed.connect(self.reset)
        events.moved.connect(self.reset)
        for layer in viewer.layers:
            layer.events.name.connect(self.reset)
        viewer.layers.selection.events.active.connect(self._on_active)
        self._on_active()

    def reset(self, *_args) -> None:
        try:
            self.combo.reset_choices()
            caption = getattr(self.combo, "_gradcam_caption", None)
            if caption is not None:
                caption[1]()
        except RuntimeError:  # the Qt widget is gone (viewer closing)
            pass

    def choose(self, layer) -> None:
        if layer is not None and any(layer is x for x in self.eligible(self.viewer)) and self.prefer(layer):
            try:
                self.combo.value = layer
            except (ValueError, RuntimeError):
                pass

    def _on_inserted(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self.reset)
        self.reset()
        if layer is not None and self.new_ones and self.prefer(layer):  # the first preferred choice, now
            self.choose(next((x for x in self.eligible(self.viewer) if self.prefer(x)), layer))
        elif layer is not None and self.newest:  # a new image is the one to work on
            self.choose(layer)

    def _on_active(self, event=None) -> None:
        self.reset()
        active, current = self.viewer.layers.selection.active, self.combo.value
        if self.group is not None and active is not None and current is not None and active is not current:
            key = self.group(active)
            if key is not None and key == self.group(current):
                return  # e.g. another class of the same run: the best one stays chosen
        if active is None:
            active = next(iter(reversed(self.eligible(self.viewer))), None) if self.newest else None
        elif not any(active is x for x in self.eligible(self.viewer)):
            active = self.relate(active) if self.relate is not None else None
        self.choose(active)


def _any(layer) -> bool:
    return True


class Section(QWidget):
    """A titled part of a form that folds away (a checkable header button over its content).

    Unlike an animated collapsible, whose height is fixed when it opens, the content keeps its own
    size hints: it is never squeezed when more widgets are docked.
    """

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        from qtpy.QtWidgets import QToolButton

        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        self.header = QToolButton()
        self.header.setText(title)
        self.header.setCheckable(True)
        self.header.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.header.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.header.toggled.connect(self._show)
        self.content = QWidget()
        self.content_layout = QVBoxLayout(self.content)
        self.content_layout.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.header)
        lay.addWidget(self.content)
        self.expand()

    def addWidget(self, widget: QWidget) -> None:  # noqa: N802 - Qt style, like QCollapsible's
        self.content_layout.addWidget(widget)

    def _show(self, expanded: bool) -> None:
        self.header.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.content.setVisible(expanded)

    def expand(self, animate: bool = False) -> None:
        self.header.setChecked(True)
        self._show(True)

    def collapse(self, animate: bool = False) -> None:
        self.header.setChecked(False)
        self._show(False)

    def isExpanded(self) -> bool:  # noqa: N802
        return self.header.isChecked()

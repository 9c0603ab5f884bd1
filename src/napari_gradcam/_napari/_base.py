"""What every widget shares: the viewer, the shared model, background work, notifications.

Long work runs in a napari ``thread_worker`` (``create_worker``).  The work function is wrapped
so that exceptions come back as a value: a :class:`~napari_gradcam.errors.GradCamError` becomes
a notification with its sentence, anything else a one-line notification plus a logged
traceback — never a traceback dialog.  ``widget.worker`` is the running worker (None when idle: a
finished run lets go of its arguments, the image among them) and ``widget.busy``
says whether it is still running (tests wait on it).
"""

from __future__ import annotations

import inspect
import logging
import traceback
from typing import TYPE_CHECKING, Any, Callable

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..errors import GradCamError
from ._compat import avoid_triton_llvm_clash
from .state import get_state, unwrap

if TYPE_CHECKING:  # pragma: no cover
    import napari

log = logging.getLogger("napari_gradcam")


class _Failure:
    """An exception raised in a worker, carried back to the GUI thread as a value."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _guard_function(func: Callable) -> Callable:
    def run(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - reported on the GUI thread
            return _Failure(e)

    return run


class _Cancelled:
    """Returned by a generator job stopped with :meth:`GradCamWidget.cancel`."""


def _guard_generator(func: Callable, should_stop: Callable[[], bool]) -> Callable:
    """Run a generator step by step; stop between steps when asked.

    Stopping closes the inner generator *in the worker thread*, so its ``finally`` blocks and
    ``with`` statements (e.g. the model lock) unwind where they started.
    """

    def run(*args, **kwargs):
        gen = func(*args, **kwargs)
        try:
            while True:
                if should_stop():
                    gen.close()
                    return _Cancelled()
                try:
                    value = next(gen)
                except StopIteration as stop:
                    return stop.value
                yield value
        except Exception as e:  # noqa: BLE001
            return _Failure(e)
        finally:
            gen.close()

    return run


def error_message(exc: BaseException, what: str) -> str:
    """The one sentence shown for an exception."""
    if isinstance(exc, GradCamError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{what} failed ({type(exc).__name__}{': ' + text if text else ''})."


def notify_error(exc: BaseException | str, what: str = "The operation") -> None:
    """Show an error as a napari notification (and log the traceback of unexpected ones)."""
    from napari.utils.notifications import show_error

    if isinstance(exc, str):
        show_error(exc)
        return
    if not isinstance(exc, GradCamError):
        log.error("%s failed", what, exc_info=(type(exc), exc, exc.__traceback__))
    show_error(error_message(exc, what))


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


class GradCamWidget(QWidget):
    """Base class: holds the viewer, its shared :class:`ModelState` and the running worker."""

    #: title used in notifications ("Explain failed ...")
    what = "The operation"

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        self.state = get_state(self.viewer)
        self.worker = None
        self._busy = False
        self._stop_requested = False
        self._progress = None  # napari.utils.progress of the running job
        self.last_error: str | None = None
        self.setLayout(QVBoxLayout())
        self.layout().setContentsMargins(6, 6, 6, 6)
        self.layout().setSpacing(4)

    # ----------------------------------------------------------------- busy / progress bar row
    @property
    def busy(self) -> bool:
        """True while this widget's worker runs (and until its results were added)."""
        return self._busy

    def refuse_if_busy(self, what: str | None = None) -> bool:
        """True (and a notification) while a run is going on: call first in ``run()``, so a refused
        run leaves the form as it is."""
        if self._busy:
            notify_info(f"{what or self.what} is still running; wait for it or cancel it.")
        return self._busy

    def source_still_there(self, layer, message: str) -> bool:
        """Whether the very layer a run started from is still in the viewer (one deleted and re-added
        under its name is another image); if not, notify ``message``."""
        if any(lyr is layer for lyr in self.viewer.layers):
            return True
        notify_info(message)
        return False

    def _make_progress_row(self) -> QWidget:
        """A QProgressBar with a Cancel button (for generator jobs)."""
        row = QWidget()
        lay = QHBoxLayout(row)
        lay.setContentsMargins(0, 0, 0, 0)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        lay.addWidget(self.progress_bar, 1)
        lay.addWidget(self.cancel_button)
        return row

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        try:
            for name in ("run_button",):
                button = getattr(self, name, None)
                if button is not None:
                    button.setEnabled(not busy)
            if getattr(self, "cancel_button", None) is not None:
                self.cancel_button.setEnabled(busy)
        except RuntimeError:  # the Qt widgets are gone (the viewer was closed while the job ran)
            pass

    def cancel(self) -> None:
        """Stop the running generator job between two of its steps (a no-op when idle)."""
        if self._busy:
            self._stop_requested = True
            if getattr(self, "cancel_button", None) is not None:
                self.cancel_button.setEnabled(False)

    # ----------------------------------------------------------------- starting work
    def start(
        self,
        func: Callable,
        *args: Any,
        on_returned: Callable[[Any], None] | None = None,
        on_yielded: Callable[[Any], None] | None = None,
        on_aborted: Callable[[], None] | None = None,
        on_finished: Callable[[], None] | None = None,
        what: str | None = None,
        progress_total: int = 0,
        **kwargs: Any,
    ):
        """Run ``func(*args, **kwargs)`` (a function or a generator function) in a thread_worker.

        Generators may yield ``(done, total)`` tuples (shown as progress) or anything else
        (passed to ``on_yielded``).  ``on_returned`` gets the result on the GUI thread;
        exceptions become notifications.  ``on_finished`` runs at the end of every run (done, failed
        or cancelled), after ``on_returned`` and before ``busy`` turns False; not when the run is refused.
        """
        from napari.qt.threading import create_worker
        from napari.utils import progress

        what = what or self.what
        avoid_triton_llvm_clash()  # before any worker may import torchvision (see _compat)
        if self.refuse_if_busy(what):
            return None
        is_gen = inspect.isgeneratorfunction(func)
        self._stop_requested = False
        wrapped = _guard_generator(func, lambda: self._stop_requested) if is_gen else _guard_function(func)
        worker = create_worker(wrapped, *args, _start_thread=False, **kwargs)
        self.worker = worker
        self.last_error = None
        self._set_busy(True)
        pbar = progress(total=progress_total, desc=what)
        self._progress = pbar
        if getattr(self, "progress_bar", None) is not None:
            self.progress_bar.setRange(0, progress_total)
            self.progress_bar.setValue(0)

        def returned(result):
            if isinstance(result, _Cancelled):
                notify_info(f"{what} was cancelled.")
                if on_aborted is not None:
                    on_aborted()
                return
            if isinstance(result, _Failure):
                log.debug("%s failed:\n%s", what, result.traceback)
                self.last_error = error_message(result.exc, what)
                notify_error(result.exc, what)
                return
            if on_returned is not None:
                try:
                    on_returned(result)
                except Exception as e:  # noqa: BLE001 - adding layers should never crash napari
                    self.last_error = error_message(e, what)
                    notify_error(e, what)

        def yielded(value):
            if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
                done, total = int(value[0]), int(value[1])
                if pbar.total != total:
                    pbar.total = total
                pbar.n = done
                pbar.refresh()
                if getattr(self, "progress_bar", None) is not None:
                    try:
                        self.progress_bar.setRange(0, max(total, 1))
                        self.progress_bar.setValue(done)
                    except RuntimeError:  # the viewer was closed
                        pass
            elif on_yielded is not None:
                try:
                    on_yielded(value)
                except Exception as e:  # noqa: BLE001
                    log.exception("progress display failed: %s", e)

        def errored(exc):  # only BaseExceptions escape the guard (e.g. KeyboardInterrupt)
            self.last_error = error_message(exc, what)
            notify_error(exc, what)

        def aborted():  # worker.quit() from outside: treated like cancel
            notify_info(f"{what} was cancelled.")
            if on_aborted is not None:
                on_aborted()

        def finished():
            pbar.close()
            if self._progress is pbar:
                self._progress = None
            if on_finished is not None:
                try:
                    on_finished()
                except Exception as e:  # noqa: BLE001
                    log.exception("cleaning up after %s failed: %s", what, e)
            if self.worker is worker:  # let go of the run's arguments (an image may be large)
                self.worker = None
            self._set_busy(False)

        worker.returned.connect(returned)
        worker.errored.connect(errored)
        if is_gen:
            worker.yielded.connect(yielded)
            worker.aborted.connect(aborted)
        worker.finished.connect(finished)
        worker.start()
        return worker

    # ----------------------------------------------------------------- helpers
    def require_model(self):
        """The shared model, or a notification and None."""
        if self.state.bundle is None:
            notify_error("No model is loaded: load one in the Model widget (or use the demo model) first.")
            self.last_error = "no model"
            return None
        return self.state.bundle

    def pick_image(self, layer=None):
        """``layer`` (checked, and chosen in the dropdown) or the dropdown's layer; None + a notification."""
        if layer is None:
            layer = self.image.require()
            if layer is None:
                self.last_error = "no image layer"
            return layer
        from napari.layers import Image

        from .layers import is_plugin_layer

        name = getattr(layer, "name", str(layer))
        if not isinstance(layer, Image):
            kind = type(layer).__name__.lower()
            notify_error(f"Layer {name!r} is a {kind} layer, not an image layer; pick an image layer.")
        elif is_plugin_layer(layer):
            notify_error(f"Layer {name!r} is a result of this plugin; pick the image it was computed from.")
        elif layer not in list(self.viewer.layers):
            notify_error(f"Layer {name!r} is not in this viewer.")
        else:
            self.image.value = layer
            return layer
        self.last_error = "wrong layer"
        return None

    def plane_to_explain(self, layer=None):
        """(layer, its plane on screen as numpy) when a model and an image layer are ready; else a
        notification and None."""
        if self.require_model() is None:
            return None
        layer = self.pick_image(layer)
        if layer is None:
            return None
        from .layers import layer_plane

        try:
            return layer, layer_plane(self.viewer, layer)
        except Exception as e:  # noqa: BLE001 - any failure to read the layer is the user's to see
            notify_error(e, self.what)
            return None

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt name
        self.cancel()
        super().closeEvent(event)


def section(title: str) -> QLabel:
    """A bold section heading."""
    label = QLabel(f"<b>{title}</b>")
    label.setTextFormat(Qt.TextFormat.RichText)
    return label


class ImageLayerPicker:
    """A live ComboBox of the viewer's image layers (our own heatmaps excluded).

    It follows the viewer's active layer when that is an eligible image.
    """

    def __init__(self, viewer: "napari.Viewer", label: str = "image") -> None:
        from magicgui.widgets import ComboBox

        self.viewer = viewer
        self.combo = ComboBox(label=label, choices=self._choices, nullable=False)
        self.combo.native.setToolTip("The image layer to analyse (the current slice of a stack).")
        events = viewer.layers.events
        events.inserted.connect(self._on_inserted)
        events.removed.connect(self.reset_choices)
        events.moved.connect(self.reset_choices)
        for layer in viewer.layers:
            layer.events.name.connect(self.reset_choices)
        viewer.layers.selection.events.active.connect(self._on_active)
        self._on_active()

    def _choices(self, _widget=None) -> list:
        from .layers import source_layers

        return [(layer.name, layer) for layer in source_layers(self.viewer)]

    def reset_choices(self, *_args) -> None:
        try:
            self.combo.reset_choices()
        except RuntimeError:  # the Qt widget is gone (viewer closing)
            pass

    def _on_inserted(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self.reset_choices)
        self.reset_choices()

    def _on_active(self, event=None) -> None:
        from .layers import source_layers

        self.reset_choices()
        active = self.viewer.layers.selection.active
        if active is not None and any(active is layer for layer in source_layers(self.viewer)):
            try:
                self.combo.value = active
            except (ValueError, RuntimeError):
                pass

    @property
    def value(self):
        """The chosen layer, or None."""
        self.reset_choices()
        value = self.combo.value
        if value is not None and value not in list(self.viewer.layers):
            return None
        return value

    @value.setter
    def value(self, layer) -> None:
        self.reset_choices()
        self.combo.value = layer

    def require(self):
        """The chosen layer, or a notification and None."""
        layer = self.value
        if layer is None:
            from .layers import source_layers

            if not source_layers(self.viewer):
                notify_error("There is no image layer to analyse: open an image (or a sample: File > Open Sample).")
            else:
                notify_error("Choose an image layer first.")
        return layer

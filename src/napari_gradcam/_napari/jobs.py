"""One job model for every widget: a run captures its model and source layers, works in a thread,
and delivers to the layers it started from.

:class:`JobRunner` (one per widget) starts a :class:`Job`:

* at the start it captures the viewer's model (:class:`ModelSnapshot`: the bundle and its label) and
  the source layers; the work gets the captured bundle, never the viewer's current one, so a model
  switched mid-run does not touch the run, and its result is labelled with the model that made it;
* the work (a function or a generator function from the core) runs in a napari ``thread_worker``
  holding the model's lock (when it uses the model), with a ``napari.utils.progress`` bar; a
  generator may yield ``(done, total)`` (progress) or anything else (``on_event``);
* :meth:`JobRunner.cancel` sets the job's stop event: a generator is closed between two of its steps,
  in its own thread (its ``finally`` blocks unwind there), or, with ``graceful_stop=True``, the work
  receives the event as ``stop_event=`` and ends itself (training keeps its best model);
* a source layer removed from the viewer stops the job at its next step; a result whose sources
  are no longer all in the viewer (identity, not names) is dropped with one notification;
* exceptions come back as values: a :class:`~napari_gradcam.errors.GradCamError` becomes a
  notification with its sentence, anything else a one-line notification and a logged traceback.

While a job runs, a second one is refused (a notification) before anything changes.  The runner's
:class:`JobState` (``runner.status``: IDLE, RUNNING, then DONE, STOPPED or CRASHED) is what the buttons
follow (``on_state``).  Every message goes through :func:`~.wording.napari_words`: napari names fields,
not command-line options.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import traceback
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import GradCamError
from ._compat import avoid_triton_llvm_clash
from .wording import napari_words

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import ModelBundle
    from .state import ModelState

log = logging.getLogger("napari_gradcam")


class JobState(Enum):
    """Where a widget's job runner stands: the run button is enabled unless RUNNING, Cancel only while RUNNING."""

    IDLE = "idle"  # nothing has run yet
    RUNNING = "running"  # a job works (until its results were delivered)
    DONE = "done"  # the last job ended normally (its results delivered, or dropped when a source went)
    STOPPED = "stopped"  # the last job was cancelled, or stopped because a source layer was removed
    CRASHED = "crashed"  # the last job ended with an error (``last_error`` says which)


#: what the widget's progress bar says in each state (Qt's placeholders: %p percent, %v value, %m maximum)
PROGRESS_TEXT = {JobState.IDLE: "", JobState.RUNNING: "%p%", JobState.DONE: "done",
                 JobState.STOPPED: "cancelled", JobState.CRASHED: "failed (see the message)"}


@dataclass(frozen=True)
class ModelSnapshot:
    """The model of a run, captured when it starts: ``bundle`` and its ``name`` (for labels)."""

    bundle: "ModelBundle"
    name: str


def error_message(exc: BaseException, what: str) -> str:
    """The one sentence shown for an exception."""
    if isinstance(exc, GradCamError):
        return napari_words(str(exc))
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{what} failed ({type(exc).__name__}{': ' + text if text else ''})."


def notify_error(exc: BaseException | str, what: str = "The operation") -> None:
    """Show an error as a napari notification (and log the traceback of unexpected ones)."""
    from napari.utils.notifications import show_error

    if isinstance(exc, str):
        show_error(napari_words(exc))
        return
    if not isinstance(exc, GradCamError):
        log.error("%s failed", what, exc_info=(type(exc), exc, exc.__traceback__))
    show_error(error_message(exc, what))


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(napari_words(message))


class _Failure:
    """An exception raised in a worker, carried back to the GUI thread as a value."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class _Stopped:
    """Returned by a generator job closed on request."""


@dataclass(eq=False)
class Job:
    """One run: what it is, what it captured, how it ends."""

    what: str
    model: ModelSnapshot | None
    sources: tuple = ()
    removed_message: str = ""
    stop_event: threading.Event = field(default_factory=threading.Event)
    source_removed: bool = False
    worker: Any = None
    progress: Any = None  # napari.utils.progress of the job

    def sources_present(self, viewer) -> bool:
        """Whether every source layer (the very objects) is still in ``viewer``."""
        return all(any(layer is src for layer in viewer.layers) for src in self.sources)


def _locked(lock, use_lock: bool):
    """The model's lock for jobs that run the model; nothing to hold for the others."""
    return lock if use_lock else contextlib.nullcontext()


def _function_job(func: Callable, lock, use_lock: bool) -> Callable:
    def run(*args, **kwargs):
        try:
            with _locked(lock, use_lock):
                return func(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - reported on the GUI thread
            return _Failure(e)

    return run


def _generator_job(func: Callable, job: Job, lock, use_lock: bool, graceful: bool) -> Callable:
    """Run a generator step by step; between steps, close it if the job's stop event is set (unless
    the generator stops itself: ``graceful``)."""

    def run(*args, **kwargs):
        with _locked(lock, use_lock):
            gen = func(*args, **kwargs)
            try:
                while True:
                    if job.stop_event.is_set() and not graceful:
                        gen.close()
                        return _Stopped()
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


class JobRunner:
    """Starts and tracks the jobs of one widget (one at a time).

    ``status`` is its :class:`JobState`; ``on_state(status)`` and ``on_busy(busy)`` are called on the GUI
    thread when it changes (buttons follow it); ``progress_bar`` and ``cancel_button`` (optional) are
    the widget's QProgressBar and Cancel QPushButton, which the runner drives.
    """

    def __init__(self, viewer, state: "ModelState", what: str, on_busy: Callable[[bool], None] | None = None,
                 on_state: Callable[[JobState], None] | None = None) -> None:
        self.viewer = viewer
        self.state = state
        self.what = what
        self.on_busy = on_busy
        self.on_state = on_state
        self.status = JobState.IDLE
        self.job: Job | None = None
        self.last_error: str | None = None
        self.progress_bar = None
        self.cancel_button = None
        viewer.layers.events.removed.connect(self._on_layer_removed)

    # ----------------------------------------------------------------- state
    @property
    def busy(self) -> bool:
        """True from the start of a job until its results were delivered (tests wait on it)."""
        return self.job is not None

    @property
    def worker(self):
        """The running job's worker (None when idle: a finished job lets go of its arguments)."""
        return self.job.worker if self.job is not None else None

    def refuse_if_busy(self, what: str | None = None) -> bool:
        """True (and a notification) while a job runs: call first, so a refused run changes nothing."""
        if self.job is not None:
            notify_info(f"{what or self.what} is still running; wait for it or cancel it.")
        return self.job is not None

    def capture_model(self) -> ModelSnapshot | None:
        """The viewer's model now, or a notification and None."""
        if self.state.bundle is None:
            self.fail("No model is loaded: load one in the Model widget (or use the demo model) first.")
            return None
        return ModelSnapshot(self.state.bundle, self.state.name)

    def fail(self, message: str) -> None:
        """A run refused before it started: one error notification, remembered in ``last_error``."""
        self.last_error = message
        notify_error(message)

    def cancel(self) -> None:
        """Ask the running job to stop (between two steps; a no-op when idle)."""
        if self.job is not None:
            self.job.stop_event.set()
            self._set_cancel_enabled(False)

    # ----------------------------------------------------------------- start
    def start(
        self,
        func: Callable,
        *args: Any,
        model: ModelSnapshot | None = None,
        sources: Sequence = (),
        removed_message: str = "",
        on_result: Callable[[Job, Any], None] | None = None,
        on_event: Callable[[Job, Any], None] | None = None,
        on_finished: Callable[[Job], None] | None = None,
        on_failure: Callable[[Job, Exception], bool] | None = None,
        total: int = 0,
        graceful_stop: bool = False,
        what: str | None = None,
        **kwargs: Any,
    ):
        """Run ``func(*args, **kwargs)`` in a thread_worker as a :class:`Job`; returns the worker, or None
        when refused.

        ``model``: the captured model (the work holds its lock); ``sources``: the layers the result
        belongs to (``removed_message`` is shown when one goes); ``on_result(job, result)`` delivers
        on the GUI thread, only when the job ended normally with its sources present;
        ``on_event(job, value)`` gets what a generator yields other than ``(done, total)``;
        ``on_finished(job)`` runs after every job (done, failed, stopped); ``on_failure(job, exc)`` sees a
        failure first and returns True when it dealt with it (no error notification).  ``graceful_stop``: the work
        gets ``stop_event=`` and stops itself.
        """
        from napari.qt.threading import create_worker

        what = what or self.what
        avoid_triton_llvm_clash()  # before any worker may import torchvision (see _compat)
        if self.refuse_if_busy(what):
            return None
        job = Job(what, model, tuple(sources), removed_message)
        if graceful_stop:
            kwargs["stop_event"] = job.stop_event
        use_lock = model is not None
        if inspect.isgeneratorfunction(func):
            wrapped = _generator_job(func, job, self.state.lock, use_lock, graceful_stop)
        else:
            wrapped = _function_job(func, self.state.lock, use_lock)
        job.worker = worker = create_worker(wrapped, *args, _start_thread=False, **kwargs)
        self.job, self.last_error = job, None
        self._set_status(JobState.RUNNING, total)
        self._connect(job, worker, on_result, on_event, on_finished, total, on_failure)
        worker.start()
        return worker

    def _connect(self, job: Job, worker, on_result, on_event, on_finished, total: int, on_failure=None) -> None:
        from napari.utils import progress

        pbar = progress(total=total, desc=job.what)

        ending = [JobState.DONE]

        def returned(result):
            ending[0] = self._job_returned(job, result, on_result, on_failure)

        def yielded(value):
            if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
                self.show_progress(int(value[0]), int(value[1]), pbar)
            elif on_event is not None:
                try:
                    on_event(job, value)
                except Exception as e:  # noqa: BLE001
                    log.exception("progress display failed: %s", e)

        def errored(exc):  # only BaseExceptions escape the guards
            ending[0] = JobState.CRASHED
            self.last_error = error_message(exc, job.what)
            notify_error(exc, job.what)

        def finished():
            pbar.close()
            if on_finished is not None:
                try:
                    on_finished(job)
                except Exception as e:  # noqa: BLE001
                    log.exception("cleaning up after %s failed: %s", job.what, e)
            job.worker = None  # let go of the run's arguments (an image may be large)
            if self.job is job:
                self.job = None
            self._set_status(ending[0], 0)

        job.progress = pbar
        worker.returned.connect(returned)
        worker.errored.connect(errored)
        if hasattr(worker, "yielded"):
            worker.yielded.connect(yielded)
        worker.finished.connect(finished)

    def _job_returned(self, job: Job, result, on_result, on_failure) -> JobState:
        """Tell the user how ``job`` ended, hand a good result to ``on_result`` (its failure told, never
        raised); return the job's final state."""
        state = JobState.DONE
        if isinstance(result, (_Failure, _Stopped)) or job.source_removed:
            state = JobState.CRASHED if isinstance(result, _Failure) else JobState.STOPPED
        if isinstance(result, _Failure):
            log.debug("%s failed:\n%s", job.what, result.traceback)
            self.last_error = error_message(result.exc, job.what)
            if on_failure is None or not on_failure(job, result.exc):
                notify_error(result.exc, job.what)
        elif isinstance(result, _Stopped):
            if not job.source_removed:
                notify_info(f"{job.what} was cancelled.")
        elif not job.sources_present(self.viewer):
            if not job.source_removed:  # else said when it went
                notify_info(job.removed_message or f"A layer of {job.what.lower()} was removed; nothing was added.")
        elif on_result is not None:
            try:
                on_result(job, result)
            except Exception as e:  # noqa: BLE001 - adding layers should never crash napari
                state = JobState.CRASHED
                self.last_error = error_message(e, job.what)
                notify_error(e, job.what)
        return state

    # ----------------------------------------------------------------- progress, sources
    def show_progress(self, done: int, total: int, pbar=None) -> None:
        """Show ``done`` of ``total`` in napari's progress bar and the widget's."""
        pbar = pbar if pbar is not None else getattr(self.job, "progress", None)
        if pbar is not None:
            if pbar.total != total:
                pbar.total = total
            pbar.n = done
            pbar.refresh()
        if self.progress_bar is not None:
            try:
                self.progress_bar.setRange(0, max(total, 1))
                self.progress_bar.setValue(done)
            except RuntimeError:  # the viewer was closed
                pass

    def _set_status(self, status: JobState, total: int) -> None:
        self.status = status
        busy = status is JobState.RUNNING
        try:
            if self.progress_bar is not None:
                self.progress_bar.setFormat(PROGRESS_TEXT[status])
            if busy and self.progress_bar is not None:
                self.progress_bar.setRange(0, max(total, 1))
                self.progress_bar.setValue(0)
            self._set_cancel_enabled(busy)
            if self.on_busy is not None:
                self.on_busy(busy)
            if self.on_state is not None:
                self.on_state(status)
        except RuntimeError:  # the Qt widgets are gone (the viewer was closed while the job ran)
            pass

    def _set_cancel_enabled(self, enabled: bool) -> None:
        if self.cancel_button is not None:
            try:
                self.cancel_button.setEnabled(enabled)
            except RuntimeError:
                pass

    def _on_layer_removed(self, event=None) -> None:
        """A source layer of the running job was removed: say so once, and stop the job at its next step."""
        job, layer = self.job, getattr(event, "value", None)
        if job is None or layer is None or job.source_removed or not any(layer is s for s in job.sources):
            return
        job.source_removed = True
        notify_info(job.removed_message or f"Layer {layer.name!r} was removed; nothing was added.")
        job.stop_event.set()
        self._set_cancel_enabled(False)

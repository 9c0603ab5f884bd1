"""Train widget: train a classifier on a folder of images, in the background, with live curves.

Runs :func:`napari_gradcam.train.train` (a generator of TrainEvents) in a napari thread_worker;
Cancel asks it to stop between two batches (the best model so far is kept and loaded).  When it
ends, the best model becomes the viewer's shared model and its validation report is shown.
"""

from __future__ import annotations

import time
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QPushButton, QTableWidget, QTableWidgetItem

from ..errors import GradCamError
from ._base import GradCamWidget, notify_info, section, wrapping_label
from .form import build_form
from .params import DEVICES, WEIGHTING, TrainParams, snapshot  # noqa: F401 - DEVICES, WEIGHTING re-exported

if TYPE_CHECKING:  # pragma: no cover
    import napari

def _train(config, stop_event=None):
    """Worker: the training generator, then the result and the best model's layers.

    ``stop_event`` is the job's (the runner's Cancel): training stops after the current batch and keeps
    its best model."""
    from dataclasses import replace

    from ..train import train

    result = yield from train(replace(config, stop_event=stop_event))
    layers = result.bundle.layers() if result.bundle is not None else []
    return result, layers


def recipe_params() -> TrainParams:
    """The form's starting values: :class:`~napari_gradcam.train.TrainConfig`'s defaults (the documented
    recipe), read from the dataclass; the image size is the one ``TrainConfig`` picks for its architecture."""
    from dataclasses import MISSING, fields

    from ..train.config import DEFAULT_SIZE, IMAGENET_SIZE, TrainConfig

    d = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    arch = d["arch"]
    return TrainParams(architecture=arch, image_size=int(d["image_size"] or DEFAULT_SIZE.get(arch, IMAGENET_SIZE)),
                       epochs=int(d["epochs"]), batch_size=int(d["batch_size"]), lr=f"{d['lr']:g}",
                       augment=bool(d["augment"]), val_fraction=float(d["val_fraction"]),
                       weighting=str(d["class_weighting"]), device=str(d.get("device") or "auto"))


def recipe_image_size(arch: str) -> int:
    """The input size ``TrainConfig`` uses for ``arch`` when none is given."""
    from ..train.config import DEFAULT_SIZE, IMAGENET_SIZE

    return DEFAULT_SIZE.get(arch, IMAGENET_SIZE)


#: the "finding" choice that unlearns every likely shortcut of the audit (``AUDIT_DIR`` alone)
ALL_SHORTCUTS = "every likely shortcut"


def audit_findings(folder: str) -> list[str]:
    """The "finding" choices of an audit folder: every likely shortcut, then each cluster as
    "ID: class, N images (verdict)"; only the first where the folder is no audit."""
    import json

    path = Path(folder) / "findings.json" if folder else None
    if path is None or not path.is_file():
        return [ALL_SHORTCUTS]
    try:
        clusters = json.loads(path.read_text(encoding="utf-8")).get("clusters", [])
        return [ALL_SHORTCUTS] + [f"{c['id']}: {c['class']}, {c['size']} images ({c['verdict']})" for c in clusters]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [ALL_SHORTCUTS]


def unlearn_spec(folder: str, finding: str) -> str | None:
    """``TrainConfig.unlearn`` of the form: None, ``AUDIT_DIR`` (every likely shortcut) or ``AUDIT_DIR:ID``."""
    if not folder or folder in (".", ""):
        return None
    return folder if finding == ALL_SHORTCUTS else f"{folder}:{finding.split(':', 1)[0]}"


def default_output(data_dir: str, arch: str) -> Path:
    """``~/napari-gradcam-models/<data folder name>-<arch>.safetensors``."""
    name = Path(data_dir).resolve().name or "model"
    return Path.home() / "napari-gradcam-models" / f"{name}-{arch}.safetensors"


def theme_colours(viewer) -> tuple[str, str]:
    """(background, text) colours of the viewer's napari theme as hex strings (the Qt palette's when
    the theme cannot be read)."""
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(getattr(viewer, "theme", "dark"))
        return theme.background.as_hex(), theme.text.as_hex()
    except Exception:  # noqa: BLE001 - no viewer, an unknown theme: the palette
        from qtpy.QtGui import QPalette
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        pal = app.palette() if app is not None else QPalette()
        return pal.color(QPalette.ColorRole.Window).name(), pal.color(QPalette.ColorRole.WindowText).name()


class _Curves:
    """Loss and metric curves: a matplotlib canvas when matplotlib is there, else a text line."""

    def __init__(self, viewer=None) -> None:
        self.viewer = viewer
        self.batch_x: list[float] = []
        self.batch_loss: list[float] = []
        self.epochs: list[dict[str, Any]] = []
        self._last_draw = 0.0
        try:
            from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            from matplotlib.figure import Figure
        except ImportError:  # pragma: no cover - matplotlib is optional
            self.widget = QLabel("")
            self.widget.setWordWrap(True)
            self.fig = None
            return
        self.fig = Figure(figsize=(4, 2.4), dpi=80, tight_layout=True)
        self.widget = FigureCanvasQTAgg(self.fig)
        self.widget.setMinimumHeight(170)
        self.ax_loss, self.ax_metric = self.fig.subplots(1, 2)
        self.follow_theme()
        if viewer is not None:
            viewer.events.theme.connect(self.follow_theme)

    def follow_theme(self, *_args) -> None:
        """Match the figure to the viewer's napari theme (its stylesheet, not the Qt palette, colours the
        docks): background and text colours; redraws."""
        self.bg, self.fg = theme_colours(self.viewer)
        self.fig.set_facecolor(self.bg)
        self.draw(force=True)

    def clear(self) -> None:
        self.batch_x.clear()
        self.batch_loss.clear()
        self.epochs.clear()
        self.draw(force=True)

    def add_batch(self, x: float, loss: float | None) -> None:
        if loss is not None:
            self.batch_x.append(x)
            self.batch_loss.append(loss)
            self.draw()

    def add_epoch(self, metrics: dict[str, Any]) -> None:
        self.epochs.append(metrics)
        self.draw(force=True)

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < 0.5:
            return
        self._last_draw = now
        if self.fig is None:
            if self.epochs:
                m = self.epochs[-1]
                self.widget.setText(f"epoch {m.get('epoch')}: loss {m.get('train_loss')}, val loss {m.get('val_loss')}, "
                                    f"balanced accuracy {m.get('balanced_accuracy')}")
            return
        ax, bx = self.ax_loss, self.ax_metric
        ax.clear()
        bx.clear()
        ax.set_title("loss", fontsize=9)
        bx.set_title("validation", fontsize=9)
        if self.batch_x:
            ax.plot(self.batch_x, self.batch_loss, lw=1, color="tab:blue", label="train")
        ep = [m["epoch"] for m in self.epochs]
        if ep:
            ax.plot(ep, [m.get("val_loss") for m in self.epochs], "o-", color="tab:orange", ms=3, label="val")
            bx.plot(ep, [m.get("accuracy") for m in self.epochs], "o-", ms=3, label="accuracy")
            bx.plot(ep, [m.get("balanced_accuracy") for m in self.epochs], "s-", ms=3, label="balanced")
            bx.set_ylim(0, 1.02)
            bx.legend(fontsize=7, loc="lower right")
        if self.batch_x or ep:
            ax.legend(fontsize=7, loc="upper right")
        for a in (ax, bx):
            a.set_xlabel("epoch", fontsize=8, color=self.fg)
            a.set_facecolor(self.bg)
            a.tick_params(labelsize=7, colors=self.fg)
            a.title.set_color(self.fg)
            for spine in a.spines.values():
                spine.set_color(self.fg)
            legend = a.get_legend()
            if legend is not None:
                legend.get_frame().set_facecolor(self.bg)
                for text in legend.get_texts():
                    text.set_color(self.fg)
        self.widget.draw_idle()


class TrainWidget(GradCamWidget):
    """Train a classifier on a data folder (one sub-folder per class); the best model is loaded when done."""

    what = "Training"

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer)
        lay = self.layout()
        self.params = recipe_params()
        self.form, controls = build_form(self.params, owner=self)
        for name, control in controls.items():  # self.data_dir, self.output, ..., self.finding
            setattr(self, name, control)
        lay.addWidget(self.form.native)
        self.output_hint = wrapping_label(rich=True)
        lay.addWidget(self.output_hint)
        self._auto_output = ""
        self._size_for = self.params.architecture
        self.data_dir.changed.connect(self._suggest_output)
        self.architecture.changed.connect(self._on_architecture)
        self.output.changed.connect(self._say_output)
        self.unlearn.changed.connect(self._list_findings)
        self._say_output()
        self.run_button = QPushButton("Train")
        self.run_button.clicked.connect(lambda: self.run())
        self.add_run_row(self.run_button)
        self.status = wrapping_label()
        lay.addWidget(self.status)
        self.curves = _Curves(self.viewer)
        lay.addWidget(self.curves.widget)
        lay.addWidget(section("Validation report (best epoch)"))
        self.report_label = wrapping_label(rich=True)
        lay.addWidget(self.report_label)
        self.confusion = QTableWidget(0, 0)
        self.confusion.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.confusion.setMinimumHeight(80)
        lay.addWidget(self.confusion)
        self.result = None
        self.events: list = []

    # ----------------------------------------------------------------- the form's reactions
    def _architecture_choices(self, _widget=None) -> list[str]:
        from ..models import list_architectures

        return list(list_architectures())

    def _finding_choices(self, _widget=None) -> list[str]:
        return audit_findings(self.params.unlearn)

    def _on_architecture(self, arch: str) -> None:
        """The recipe's image size follows the architecture (unless it was changed by hand); so does the
        suggested file name."""
        if int(self.image_size.value) == recipe_image_size(self._size_for):
            self.image_size.value = recipe_image_size(arch)
        self._size_for = arch
        self._suggest_output()

    def _suggest_output(self, *_args) -> None:
        """Fill "save as" with the default path once a data folder is chosen (a path typed by hand stays)."""
        data = self.params.data_dir
        if data and Path(data).is_dir() and self.params.output in ("", self._auto_output):
            self._auto_output = str(default_output(data, self.params.architecture))
            self.output.value = self._auto_output
        self._say_output()

    def _list_findings(self, *_args) -> None:
        """The chosen audit folder's findings as the "finding" choices."""
        self.finding.choices = audit_findings(self.params.unlearn)
        self.finding.value = ALL_SHORTCUTS

    def _say_output(self, *_args) -> None:
        where = self.params.output or str(default_output("<data folder>", self.params.architecture))
        self.output_hint.setText(f"<small>The best model will be saved to <b>{escape(where)}</b></small>")

    # ----------------------------------------------------------------- run / cancel
    def config(self, p: TrainParams | None = None):
        """The TrainConfig of the parameters (default: the form's; GradCamError for a bad value)."""
        from ..train import TrainConfig

        p = p if p is not None else snapshot(self.params)
        data = p.data_dir
        if not data or not Path(data).is_dir():
            raise GradCamError("Choose a data folder (one sub-folder of images per class).")
        try:
            lr = float(str(p.lr).strip())
        except ValueError:
            raise GradCamError(f"The learning rate must be a number, not {p.lr!r}.") from None
        out = Path(p.output) if p.output else default_output(str(data), p.architecture)
        if out.suffix != ".safetensors":
            out = out.with_suffix(".safetensors")
        return TrainConfig(
            data_dir=str(data), out=str(out), arch=p.architecture, image_size=int(p.image_size),
            epochs=int(p.epochs), batch_size=int(p.batch_size), lr=lr, augment=bool(p.augment),
            val_fraction=float(p.val_fraction), class_weighting=p.weighting, device=p.device,
            unlearn=unlearn_spec(p.unlearn, p.finding),
        )

    def run(self, **options):
        """Start training (``options`` set the form: data_dir, output, architecture, image_size, epochs, ...).

        While a run is going on, another is refused (a notification): the form, the live curves and a
        pending cancel are left as they are.
        """
        if self.refuse_if_busy():
            return None
        for name, value in options.items():  # the parameters (the bound form follows), never the controls
            setattr(self.params, name, str(value) if isinstance(value, Path) else value)
        try:
            cfg = self.config()
        except GradCamError as e:
            self.jobs.fail(str(e))
            return None
        if not self.params.output:
            self.params.output = cfg.out  # where it will be saved, shown
        self.events = []
        self.result = None
        self.curves.clear()
        self.report_label.setText("")
        self.confusion.setRowCount(0)
        self.confusion.setColumnCount(0)
        self.status.setText("starting…")
        return self.jobs.start(_train, cfg, graceful_stop=True, total=1000,
                               on_result=lambda job, result: self._done(result),
                               on_event=lambda job, event: self._on_event(event))

    def cancel(self) -> None:
        """Stop after the current batch; the best model so far (if an epoch finished) is still loaded."""
        if self.busy:
            self.status.setText("stopping after this batch…")
        super().cancel()

    # ----------------------------------------------------------------- events
    def _on_event(self, event) -> None:
        self.events.append(event)
        kind = getattr(event, "kind", "")
        self.jobs.show_progress(int(round(event.progress * 1000)), 1000)
        if kind == "load":
            self.status.setText(f"reading images {event.batch}/{event.n_batches}")
        elif kind == "batch":
            ips = f", {event.images_per_s:.0f} img/s" if event.images_per_s else ""
            loss = f"{event.loss:.4f}" if event.loss is not None else "…"
            self.status.setText(f"epoch {event.epoch}/{event.n_epochs}, batch {event.batch}/{event.n_batches}: "
                                f"loss {loss}{ips}")
            if event.n_batches:
                self.curves.add_batch(event.epoch - 1 + event.batch / event.n_batches, event.loss)
        elif kind == "epoch":
            self.curves.add_epoch(event.metrics)
            self.status.setText(event.message)
        elif kind in ("start", "done", "stopped"):
            self.status.setText(event.message)
        elif kind == "warning":  # said once per run, e.g. training and validation inputs that differ
            self.status.setText(event.message)
            notify_info(event.message)

    def _done(self, result) -> None:
        res, layers = result
        self.result = res
        if res.bundle is not None:
            source = str(res.best_path) if res.best_path else "trained here"
            self.state.set_model(res.bundle, source, layers)
            done = "stopped" if res.stopped else "finished"
            notify_info(f"Training {done} after {res.epochs_done} epoch(s); the best model (epoch {res.best_epoch}) "
                        f"is loaded{' and saved to ' + str(res.best_path) if res.best_path else ''}.")
        else:
            notify_info("Training stopped before an epoch finished; no model was saved.")
        self.progress_bar.setValue(1000 if not res.stopped else self.progress_bar.value())
        best = next((h for h in res.history if h.get("epoch") == res.best_epoch), None)
        if best is not None:
            self._show_report(best, res.bundle.classes if res.bundle is not None else [])

    def _show_report(self, m: dict, classes: list[str]) -> None:
        def pct(v):
            return "n/a" if v is None else f"{100 * v:.1f}%"

        auc = m.get("roc_auc")
        sens = m.get("sensitivity") or {}
        spec = m.get("specificity") or {}
        per_class = "<br>".join(f"{c}: sensitivity {pct(sens.get(c))}, specificity {pct(spec.get(c))}" for c in classes)
        self.report_label.setText(
            f"epoch {m.get('epoch')}: accuracy <b>{pct(m.get('accuracy'))}</b>, balanced accuracy "
            f"<b>{pct(m.get('balanced_accuracy'))}</b>, ROC AUC {'n/a' if auc is None else f'{auc:.3f}'}<br>"
            f"{per_class}<br><i>confusion matrix: rows true class, columns predicted</i>")
        cm = m.get("confusion_matrix") or []
        t = self.confusion
        t.setRowCount(len(cm))
        t.setColumnCount(len(cm))
        t.setHorizontalHeaderLabels(list(classes)[: len(cm)])
        t.setVerticalHeaderLabels(list(classes)[: len(cm)])
        for i, row in enumerate(cm):
            for j, v in enumerate(row):
                item = QTableWidgetItem(str(v))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                if i == j:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                t.setItem(i, j, item)
        t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        t.resizeRowsToContents()
        rows = sum(t.rowHeight(i) for i in range(t.rowCount()))
        t.setFixedHeight(t.horizontalHeader().height() + rows + 2 * t.frameWidth() + 2)  # no empty area below

"""Model widget: open a model file, build an architecture by name, or load the demo model.

The loaded model is the viewer's shared model (:mod:`.state`): the other widgets use it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QWidget

from ..errors import GradCamError, ModelFileError
from ._base import GradCamWidget, Section, notify_error, section, wrapping_label
from .form import build_form
from .params import DEFAULT_CLASSES, DEVICES, ModelParams, adopt, snapshot  # noqa: F401 - re-exported

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..bundle import ModelBundle

#: the fields of the "Open or build a model" form, and of the "Run on" one
OPEN_FIELDS = ("file", "architecture", "classes", "in_channels", "input_size", "mean", "std")
RUN_FIELDS = ("device", "target_layer")


def demo_model_path() -> Path:
    """Where the shipped demo model lives (see :mod:`napari_gradcam.shipped`)."""
    from ..shipped import DEMO_MODEL, shipped_file

    return shipped_file(DEMO_MODEL)


def _parse_classes(text: str) -> list[str]:
    classes = [c.strip() for c in text.replace(";", ",").split(",") if c.strip()]
    if len(classes) < 2:
        raise GradCamError("Give at least two class names, separated by commas (e.g. 'normal, pneumonia').")
    return classes


def parse_numbers(text: str, field: str) -> list[float] | None:
    """'0.485, 0.456, 0.406' -> [0.485, 0.456, 0.406]; '' or 'auto' -> None; else one sentence naming ``field``."""
    text = str(text or "").strip()
    if text.lower() in ("", "auto"):
        return None
    try:
        return [float(v) for v in text.replace(";", ",").replace(" ", ",").split(",") if v.strip()]
    except ValueError:
        raise GradCamError(f"The {field} field needs numbers separated by commas (one per channel, e.g. '0.5' or "
                           f"'0.485, 0.456, 0.406'), or 'auto'; not {text!r}.") from None


def searchable(combo) -> None:
    """Let a QComboBox be searched by typing: matches anywhere in the name, picked from a popup."""
    from qtpy.QtWidgets import QComboBox, QCompleter

    combo.setEditable(True)
    combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
    completer = QCompleter(combo.model(), combo)
    completer.setFilterMode(Qt.MatchFlag.MatchContains)
    completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
    completer.setCompletionMode(QCompleter.CompletionMode.PopupCompletion)
    combo.setCompleter(completer)


def _load_file(path: str, device: str, arch: str, classes: str, in_channels: int | str, input_size: int,
               mean: list[float] | None = None, std: list[float] | None = None):
    """Worker: load a bundle (or bare weights / an ONNX graph described by the form) and list its layers.

    ``in_channels`` "auto" reads the channel count from the weights (or the ONNX graph); ``mean`` and
    ``std`` (None: the file's, or the architecture's default) normalise the inputs of bare weights and ONNX
    graphs (a bundle records its own)."""
    from ..bundle import load_model

    p = Path(path)
    bare = p.suffix.lower() in (".pt", ".pth", ".bin")
    if not bare and p.suffix.lower() != ".onnx":
        try:
            bundle = load_model(p, device=device)
            return bundle, bundle.layers(), str(p)
        except ModelFileError as e:
            if "bare weights" not in str(e):
                raise
    channels = None if str(in_channels) == "auto" else int(in_channels)
    if p.suffix.lower() == ".onnx":
        bundle = load_model(p, classes=_parse_classes(classes), in_channels=channels, device=device, mean=mean,
                            std=std)
        return bundle, bundle.layers(), str(p)
    bundle = load_model(p, architecture=arch, classes=_parse_classes(classes), in_channels=channels,
                        input_size=input_size, device=device, mean=mean, std=std)
    return bundle, bundle.layers(), str(p)


def _build(arch: str, classes: str, in_channels: int, input_size: int, device: str,
           mean: list[float] | None = None, std: list[float] | None = None):
    from ..bundle import build_model

    bundle = build_model(arch, _parse_classes(classes), in_channels=in_channels, input_size=input_size,
                         device=device, mean=mean, std=std)
    return bundle, bundle.layers(), f"untrained {bundle.architecture}"


def _load_demo(device: str):
    from ..bundle import load_model

    path = demo_model_path()
    if not path.is_file():
        raise GradCamError(f"The demo model is not installed (expected at {path}); train one in the Train widget.")
    bundle = load_model(path, device=device)
    return bundle, bundle.layers(), "demo model"


class ModelWidget(GradCamWidget):
    """Load, build or pick the model every other widget uses; choose its device and target layer."""

    what = "Loading the model"

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__(napari_viewer)
        lay = self.layout()
        self.params = ModelParams()
        self._quiet = False  # the form follows the shared model: no reactions to it
        self.info = wrapping_label(rich=True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(section("Current model"))
        lay.addWidget(self.info)

        self._build_open_section(lay)
        self._build_run_section(lay)

        self._device_in_use = "auto"
        self.file.changed.connect(self._on_file_chosen)
        self.device.changed.connect(self._on_device)
        self.target_layer.changed.connect(self._on_target_layer)
        self.state.model_changed.connect(self._on_model_changed)
        self.state.target_layer_changed.connect(self._on_state_target_layer)
        self._on_model_changed(self.state.bundle)

    def _build_open_section(self, lay) -> None:
        """The "Open or build a model" section: the file, the building fields, a hint and the buttons."""
        from ._compat import avoid_triton_llvm_clash

        avoid_triton_llvm_clash()  # list_architectures(all=True) imports torchvision (see _compat)
        self.form, controls = build_form(self.params, owner=self, names=OPEN_FIELDS)
        self.file, self.architecture, self.classes, self.in_channels, self.input_size, self.mean, self.std = (
            controls[n] for n in OPEN_FIELDS)
        searchable(self.architecture.native)
        hint = wrapping_label("<small>Bundles (.safetensors) describe themselves; architecture, classes, channels, "
                              "input size, mean and std are for building a model or reading bare .pt/.pth "
                              "weights or an ONNX graph.</small>",
                              rich=True)
        self.open_section = Section("Open or build a model")
        self.open_section.addWidget(self.form.native)
        self.open_section.addWidget(hint)

        self._add_buttons()
        self.open_section.expand(animate=False)
        lay.addWidget(self.open_section)

    def _build_run_section(self, lay) -> None:
        """The "Run on" section: the device and the target layer."""
        lay.addWidget(section("Run on"))
        self.run_form, controls = build_form(self.params, owner=self, names=RUN_FIELDS)
        self.device, self.target_layer = (controls[n] for n in RUN_FIELDS)
        lay.addWidget(self.run_form.native)
        lay.addStretch(1)

    def _add_buttons(self) -> None:
        """Load file, Build untrained and Demo model in the footer (always in view), disabled while a job runs."""
        buttons = QWidget()
        blay = QHBoxLayout(buttons)
        blay.setContentsMargins(0, 0, 0, 0)
        self.load_button = QPushButton("Load file")
        self.build_button = QPushButton("Build untrained")
        self.demo_button = QPushButton("Demo model")
        self.load_button.setToolTip("Load the model file chosen above.")
        self.build_button.setToolTip("Build the architecture above with random weights (for trying things out).")
        self.demo_button.setToolTip("Load the small demo model trained on synthetic chest X-rays.")
        for b in (self.load_button, self.build_button, self.demo_button):
            blay.addWidget(b)
        self.load_button.clicked.connect(lambda: self.load_file())
        self.build_button.clicked.connect(lambda: self.build())
        self.demo_button.clicked.connect(lambda: self.load_demo())
        self.busy_buttons = (self.load_button, self.build_button, self.demo_button)
        self.add_run_row(buttons)

    # ----------------------------------------------------------------- actions
    @contextmanager
    def _quietly(self):
        """Set the form without its reactions (loading a chosen file, following the shared model)."""
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def load_file(self, path: str | os.PathLike | None = None):
        """Load a model file (the one in the form when ``path`` is None)."""
        if path is not None:
            with self._quietly():
                self.params.file = str(path)
        p = snapshot(self.params)
        if not p.file or Path(p.file).is_dir():
            notify_error("Choose a model file first (.safetensors, .pt or .pth).")
            return None
        normalisation = self._normalisation(p)
        if normalisation is None:
            return None
        return self.jobs.start(_load_file, p.file, p.device, p.architecture, p.classes, p.in_channels,
                               int(p.input_size), *normalisation,
                               on_result=lambda _job, result: self._set_loaded(result), what="Loading the model")

    def build(self, architecture: str | None = None, classes: str | list[str] | None = None,
              in_channels: int | None = None, input_size: int | None = None, mean=None, std=None):
        """Build an untrained model of the form's (or the given) architecture (``mean``/``std``: numbers or
        the fields' text); the arguments set the parameters (the form shows them)."""
        p = adopt(self.params, architecture=architecture, classes=_text(classes), mean=_text(mean),
                  std=_text(std), in_channels=None if in_channels is None else int(in_channels),
                  input_size=None if input_size is None else int(input_size))
        channels = 1 if p.in_channels == "auto" else int(p.in_channels)
        normalisation = self._normalisation(p)
        if normalisation is None:
            return None
        return self.jobs.start(_build, p.architecture, p.classes, channels, int(p.input_size), p.device,
                               *normalisation, on_result=lambda _job, result: self._set_loaded(result),
                               what="Building the model")

    def _normalisation(self, p: ModelParams) -> tuple | None:
        """(mean, std) of the parameters (None each for 'auto'), or a notification naming the field and None."""
        try:
            mean, std = parse_numbers(p.mean, "mean"), parse_numbers(p.std, "std")
        except GradCamError as e:
            self.jobs.fail(str(e))
            return None
        if (mean is None) != (std is None):
            self.jobs.fail("Give both the mean and the std field (or set both to 'auto').")
            return None
        return mean, std

    def load_demo(self):
        """Load the shipped demo model (simple_cnn on synthetic chest X-rays)."""
        return self.jobs.start(_load_demo, self.params.device, on_result=lambda _job, result: self._set_loaded(result),
                               what="Loading the demo model")

    def set_bundle(self, bundle: "ModelBundle", source: str = "", layers: list[str] | None = None) -> None:
        """Make ``bundle`` the shared model (on the GUI thread; lists its layers if not given)."""
        self.state.set_model(bundle, source, layers)

    def set_file(self, path: str | os.PathLike) -> None:
        """Fill in the file field without loading (e.g. a dropped file that needs the form's details)."""
        with self._quietly():
            self.params.file = str(path)
        self.open_section.expand(animate=False)

    def _on_file_chosen(self, value) -> None:
        """A bundle picked in the file dialog loads at once (bare weights wait for the form and Load)."""
        if not self._quiet and value is not None and Path(value).suffix.lower() == ".safetensors" and Path(value).is_file():
            self.load_file()

    def _set_loaded(self, result) -> None:
        from ._base import notify_info

        bundle, layers, source = result
        self._device_in_use = self.params.device
        self.state.set_model(bundle, source, layers)
        for note in getattr(bundle, "notes", []):
            notify_info(note)

    # ----------------------------------------------------------------- reactions
    def _architecture_choices(self, _widget=None) -> list[str]:
        from ..models import list_architectures

        return list(list_architectures(all=True))

    def _layer_choices(self, _widget=None) -> list[str]:
        return list(self.state.layers)

    def _sync_form(self, bundle) -> None:
        """Show the loaded model's description in the form (so "Build untrained" rebuilds its like)."""
        name = bundle.architecture.removeprefix("torchvision:")
        if name in self.architecture.choices:
            self.params.architecture = name
        self.params.classes = ", ".join(bundle.classes)
        self.params.input_size = bundle.input_size  # channels stay as chosen ("auto": read from the next file)

    def _on_model_changed(self, bundle) -> None:
        if bundle is not None:
            self._sync_form(bundle)
        with self._quietly():
            self.target_layer.reset_choices()
            if bundle is not None and self.state.target_layer in self.target_layer.choices:
                self.target_layer.value = self.state.target_layer
        self._update_info()

    def _on_state_target_layer(self, name: str) -> None:
        if name and name in self.target_layer.choices and self.target_layer.value != name:
            with self._quietly():
                self.params.target_layer = name

    def _on_target_layer(self, name) -> None:
        if name and not self._quiet and self.state.bundle is not None:
            self.state.target_layer = str(name)

    def _on_device(self, device: str) -> None:
        bundle = self.state.bundle
        if bundle is None:
            self._device_in_use = device
            return
        if self.state.lock.acquire(timeout=0.1):
            try:
                bundle.to(device)
                self._device_in_use = device
            except (GradCamError, RuntimeError, AssertionError) as e:
                notify_error(e if isinstance(e, GradCamError) else GradCamError(
                    f"The model cannot run on {device!r} here ({str(e).splitlines()[0]})."))
                self.device.changed.disconnect(self._on_device)
                self.device.value = self._device_in_use
                self.device.changed.connect(self._on_device)
            finally:
                self.state.lock.release()
        else:
            notify_error("The model is busy; change the device when the running job has finished.")
            self.device.changed.disconnect(self._on_device)
            self.device.value = self._device_in_use
            self.device.changed.connect(self._on_device)
        self._update_info()

    def _update_info(self) -> None:
        b = self.state.bundle
        if b is None:
            self.info.setText("<i>No model loaded.</i> Open a model file, build an architecture, or load the "
                              "demo model.")
            return
        classes = ", ".join(b.classes)
        lines = [
            f"<b>{b.architecture}</b> &nbsp;<span style='color:gray'>{self.state.source}</span>",
            f"classes ({b.n_classes}): {classes}",
            f"input: {b.input_size} x {b.input_size} px, {b.in_channels} channel{'s' if b.in_channels > 1 else ''}"
            f" &nbsp;·&nbsp; device: {b.device}",
            "normalisation: mean " + ", ".join(f"{v:.4g}" for v in b.config.mean) + "; std "
            + ", ".join(f"{v:.4g}" for v in b.config.std),
        ]
        training = getattr(b.config, "training", None) or {}
        if training.get("epochs_done"):
            text = f"trained {training['epochs_done']} epoch{'s' if training['epochs_done'] != 1 else ''}"
            best, monitor = training.get("best_metric"), training.get("monitor")
            if isinstance(best, (int, float)) and monitor:
                label = str(monitor).replace("val_", "").replace("_", " ")
                text += f"; best validation {label} {best:.3f}"
                if training.get("best_epoch"):
                    text += f" (epoch {training['best_epoch']})"
            lines.append(text)
        self.info.setText("<br>".join(lines))

    def reset_choices(self, *_args) -> None:
        self.target_layer.reset_choices()


def _text(value) -> "str | None":
    """A list of names or numbers as the form's text ("a, b"; numbers as %g); a string as it is; None stays."""
    if value is None or isinstance(value, str):
        return value
    return ", ".join(v if isinstance(v, str) else f"{v:g}" for v in value)

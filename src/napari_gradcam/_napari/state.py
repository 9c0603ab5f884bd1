"""The model shared by the widgets of one viewer.

Each viewer has one :class:`ModelState`; the Model widget (or the Train widget, or the
"demo model" sample) sets its bundle, and every other widget listens to
``model_changed`` to refresh its class / target / layer dropdowns.  Workers that run the
model hold ``state.lock`` so that two jobs never hook the same network at once.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

from psygnal import Signal

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..bundle import ModelBundle


class ModelState:
    """The current model of a viewer (None until one is loaded)."""

    model_changed = Signal(object)  # the new ModelBundle (or None)
    target_layer_changed = Signal(str)

    def __init__(self) -> None:
        self.bundle: ModelBundle | None = None
        self.source: str = ""  # file path, "demo model", "untrained resnet18", ...
        self.layers: list[str] = []  # spatial layers, usable as Grad-CAM targets
        self._target_layer: str = ""
        self.lock = threading.RLock()

    @property
    def target_layer(self) -> str:
        """The layer chosen in the Model widget (default: the model's own target layer)."""
        return self._target_layer

    @target_layer.setter
    def target_layer(self, name: str) -> None:
        name = name or (self.bundle.target_layer if self.bundle is not None else "")
        if name != self._target_layer:
            self._target_layer = name
            self.target_layer_changed.emit(name)

    def set_model(self, bundle: "ModelBundle | None", source: str = "", layers: list[str] | None = None) -> None:
        """Make ``bundle`` the current model and tell the widgets."""
        self.bundle = bundle
        self.source = source
        if bundle is None:
            self.layers = []
        else:
            self.layers = list(layers) if layers is not None else bundle.layers()
            if bundle.target_layer not in self.layers:
                self.layers.insert(0, bundle.target_layer)
        self._target_layer = bundle.target_layer if bundle is not None else ""
        self.model_changed.emit(bundle)
        self.target_layer_changed.emit(self._target_layer)

    @property
    def name(self) -> str:
        """A short description for labels: "simple_cnn (demo model)"."""
        if self.bundle is None:
            return "no model"
        return f"{self.bundle.architecture} ({self.source})" if self.source else self.bundle.architecture


_STATES: dict[int, ModelState] = {}


def unwrap(viewer):
    """The viewer itself, not napari's PublicOnlyProxy around it (a new proxy per widget)."""
    return getattr(viewer, "__wrapped__", viewer)


def get_state(viewer: "napari.Viewer") -> ModelState:
    """The :class:`ModelState` of ``viewer`` (created on first use, dropped with the viewer)."""
    viewer = unwrap(viewer)
    key = id(viewer)
    state = _STATES.get(key)
    if state is None:
        state = _STATES[key] = ModelState()
        weakref.finalize(viewer, _STATES.pop, key, None)
    return state

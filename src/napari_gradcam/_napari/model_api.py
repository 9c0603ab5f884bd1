"""Hand a model to a viewer from Python: napari's console, a script, or the model-file reader.

    import napari, napari_gradcam as ng
    viewer = napari.Viewer()
    bundle = ng.build_model("resnet18", classes=["normal", "pneumonia"], in_channels=1, input_size=224)
    ng.use_model(viewer, bundle)          # every napari-gradcam widget of this viewer now uses it

The model goes into the viewer's shared :class:`~napari_gradcam._napari.state.ModelState` (the
same one the Model widget sets) and the plugin's panel is docked (or shown) at its Model tab.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import GradCamError
from .state import get_state, unwrap

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..bundle import ModelBundle

PLUGIN = "napari-gradcam"


def show_model_widget(viewer: "napari.Viewer"):
    """Dock the plugin's panel in ``viewer`` (or show the one docked) at its Model tab and return the Model
    widget; None without a window."""
    from .panel import PANEL

    window = getattr(unwrap(viewer), "window", None)
    if window is None or not hasattr(window, "add_plugin_dock_widget"):
        return None
    dock, panel = window.add_plugin_dock_widget(PLUGIN, PANEL)
    dock.show()
    dock.raise_()
    return panel.show_tab("model")


def _as_bundle(model: Any) -> "ModelBundle":
    """A ModelBundle as is; a path loaded with :func:`napari_gradcam.load_model`; anything else refused."""
    from ..bundle import ModelBundle, load_model

    if isinstance(model, ModelBundle):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    kind = type(model).__name__
    if any(c.__name__ == "Module" and c.__module__.startswith("torch.nn") for c in type(model).__mro__):
        raise GradCamError(f"use_model needs a ModelBundle, not a bare {kind}; wrap it first with "
                           "napari_gradcam.wrap_model(module, classes=[...], input_size=...).")
    raise GradCamError(f"use_model needs a ModelBundle (from build_model, load_model or wrap_model) or a "
                       f"model file path, not {kind}.")


def use_model(viewer: "napari.Viewer", model: "ModelBundle | str | os.PathLike", source: str = "") -> "ModelBundle":
    """Make ``model`` the model of every napari-gradcam widget of ``viewer``, and show it in the Model widget.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer (``viewer`` in napari's console).
    model : ModelBundle or path
        A bundle from :func:`~napari_gradcam.build_model`, :func:`~napari_gradcam.load_model` or
        ``wrap_model`` (any ``nn.Module`` with its class names), or a model file to load.
    source : str
        What the Model widget says the model came from (default: the file, or "set from Python").

    Returns
    -------
    ModelBundle
        The bundle now in use.

    Raises
    ------
    GradCamError
        ``model`` is neither a bundle nor a loadable model file; one sentence.
    """
    bundle = _as_bundle(model)
    if not source:
        source = str(model) if isinstance(model, (str, os.PathLike)) else "set from Python"
    get_state(viewer).set_model(bundle, source)
    show_model_widget(viewer)
    return bundle

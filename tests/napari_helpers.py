"""Helpers shared by the napari widget tests (real viewers, plugin dock widgets)."""

PLUGIN = "napari-gradcam"


def wait(qtbot, widget, timeout=60_000):
    """Wait until a plugin widget's background job has finished."""
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def dock(viewer, name):
    """Dock the plugin widget called ``name`` and return it."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def load(qtbot, viewer, model_file):
    """Dock the Model widget, load ``model_file`` into it and return the widget."""
    mw = dock(viewer, "Model")
    mw.load_file(model_file)
    wait(qtbot, mw)
    assert mw.state.bundle is not None, mw.last_error
    return mw


def save_tiny_model(tmp_path_factory, classes, size: int = 32):
    """An untrained simple_cnn (1 channel, ``size`` px, ``classes``) saved as a bundle; its path."""
    import torch

    from napari_gradcam import build_model, save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(build_model("simple_cnn", list(classes), 1, size), path)
    return path

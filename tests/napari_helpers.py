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

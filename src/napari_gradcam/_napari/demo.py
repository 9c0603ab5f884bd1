"""``napari-gradcam demo``: napari with the plugin's widgets, a sample X-ray, the demo model,
its prediction and its Grad-CAM overlay — or, with ``--screenshot FILE``, the same view as a PNG.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger("napari_gradcam")

PLUGIN = "napari-gradcam"
DEMO_LABEL = "pneumonia"
WINDOW_SIZE = (1280, 800)


def _wait(widget, timeout: float = 120.0) -> None:
    """Process Qt events until ``widget`` has finished its job (or raise TimeoutError)."""
    from qtpy.QtWidgets import QApplication

    t0 = time.monotonic()
    while widget.busy:
        QApplication.processEvents()
        time.sleep(0.01)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{widget.what} did not finish within {timeout:.0f} s.")
    QApplication.processEvents()


def _settle(seconds: float = 0.5) -> None:
    from qtpy.QtWidgets import QApplication

    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        QApplication.processEvents()
        time.sleep(0.02)


def has_colour(rgba, min_pixels: int = 500, min_spread: int = 40) -> bool:
    """True if at least ``min_pixels`` pixels are clearly coloured (R, G, B differ by ``min_spread``)."""
    import numpy as np

    rgb = np.asarray(rgba)[..., :3].astype(np.int16)
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    return int((spread >= min_spread).sum()) >= min_pixels


def _outline(labels) -> None:
    """Show a lesion Labels layer as a thin cyan contour (best effort across napari versions)."""
    try:
        labels.contour = 2
        labels.opacity = 0.9
        labels.visible = True
        from napari.utils.colormaps import DirectLabelColormap

        labels.colormap = DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: (0.2, 1, 1, 1)})
    except Exception:  # noqa: BLE001 - cosmetic only
        log.debug("could not style the lesion outline", exc_info=True)


def build_demo(viewer, model_path: str | Path | None = None, wait: bool = False) -> dict:
    """Populate ``viewer``: sample X-ray, the plugin's panel (a tab per task, at Explain), the demo model,
    its prediction and its Grad-CAM overlay.  The work runs in the widgets' workers, chained by
    their signals; with ``wait=True`` this returns only when everything is shown.

    Returns the panel's widgets by tab name in lower case ("model", "classify", "explain", ...).
    """
    from ..errors import GradCamError
    from ._base import notify_error
    from .model_widget import demo_model_path
    from .panel import PANEL
    from .sample_data import _xray

    from napari.layers import Layer

    layers = [viewer.add_layer(Layer.create(d, k, t)) for d, k, t in _xray(DEMO_LABEL)]
    image = layers[0]
    # a slightly dimmed display leaves head-room for the additive heatmap (bright bone would saturate to white)
    image.contrast_limits = (0.0, 330.0)
    if len(layers) > 1:  # the true lesion as a thin outline: compare it with the heatmap
        _outline(layers[1])
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, PANEL)  # every task, a tab each
    widgets = dict(panel.widgets)
    model_w, classify_w, explain_w = widgets["model"], widgets["classify"], widgets["explain"]
    model_w.open_section.collapse(animate=False)  # room for the results
    panel.show_tab("explain")

    path = Path(model_path) if model_path is not None else demo_model_path()
    if not path.is_file():
        raise GradCamError(f"The demo model is not installed (expected at {path}).")

    def on_model(bundle) -> None:
        if bundle is None:
            return
        model_w.state.model_changed.disconnect(on_model)
        classify_w.run(layer=image)
        explain_w.run(layer=image, method="gradcam", target="predicted")

    model_w.state.model_changed.connect(on_model)
    if model_path is None:
        model_w.load_demo()
    else:
        model_w.load_file(path)
    if wait:
        _wait(model_w)
        if model_w.last_error:
            raise GradCamError(model_w.last_error)
        _wait(classify_w)
        _wait(explain_w)
        if explain_w.last_error or classify_w.last_error:
            notify_error(explain_w.last_error or classify_w.last_error)
    viewer.layers.selection.active = image
    return widgets


def run_demo(screenshot: str | None = None, model_path: str | None = None) -> int:
    """Open the demo (``napari.run()``), or render it to ``screenshot`` (a PNG) and exit.

    Returns 0 on success, 2 for a user-facing problem (message on stderr).
    """
    import sys

    from .model_widget import demo_model_path

    path = Path(model_path) if model_path is not None else demo_model_path()
    if not path.is_file():
        what = "The demo model is not installed" if model_path is None else "There is no model file"
        print(f"napari-gradcam demo: {what} (expected at {path}).", file=sys.stderr)
        return 2

    # torchvision (-> triton) before napari's OpenGL context: see _compat
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - only an optimisation; the plugin guards itself
        pass
    import napari

    from ..errors import GradCamError

    viewer = napari.Viewer(title="napari-gradcam demo")
    try:
        viewer.window.resize(*WINDOW_SIZE)
    except Exception:  # noqa: BLE001
        pass
    try:
        widgets = build_demo(viewer, model_path, wait=screenshot is not None)
    except (GradCamError, TimeoutError) as e:
        print(f"napari-gradcam demo: {e}", file=sys.stderr)
        viewer.close()
        return 2
    if screenshot is None:
        napari.run()
        return 0
    try:
        _settle(0.8)
        from ..outputs import atomic_write, image_writer

        path = Path(screenshot)
        img = viewer.screenshot(canvas_only=False, flash=False)
        atomic_write(path, image_writer(img, path))  # a failed write leaves the previous screenshot
        canvas = viewer.screenshot(canvas_only=True, flash=False)
        if not has_colour(canvas):
            print(f"napari-gradcam demo: warning: the screenshot at {path} shows no coloured overlay.", file=sys.stderr)
        else:
            print(f"napari-gradcam demo: wrote {path} ({img.shape[1]} x {img.shape[0]} px); prediction: "
                  f"{widgets['classify'].result['predicted'] if widgets['classify'].result else 'n/a'}")
    finally:
        viewer.close()
    return 0


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - convenience entry point
    import argparse

    p = argparse.ArgumentParser(prog="python -m napari_gradcam._napari.demo")
    p.add_argument("--screenshot", default=None)
    p.add_argument("--model", default=None)
    a = p.parse_args(argv)
    return run_demo(a.screenshot, a.model)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

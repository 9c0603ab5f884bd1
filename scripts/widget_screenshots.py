"""Screenshots of the napari-gradcam panel, one per tab, in a 1,280 x 800 napari window (docs/widgets_*.png).

    xvfb-run -a -s "-screen 0 1280x800x24" python scripts/widget_screenshots.py [--out docs]

The panel (a tab per task) docked in a 1,280 x 800 window, each tab shown after its own run, with what
it added on the canvas: the demo model; the sample mosaic's tiled heatmaps; the sample pneumonia X-ray
classified, explained (all classes, probability scale; then integrated gradients, a signed map), its
methods compared (a labelled grid and a score table), its feature-map grid; the heatmap scored against
the lesion outline; a five-epoch training on tiny phantoms.  Writes ``widgets_<tab>.png`` for each tab
(the whole window; ``widgets_all_docked.png``: the panel at its Explain tab at the end) and prints, as JSON, the window's size, every run button that is not fully inside
the window, and every form control shorter than its size hint (the exit code is 1 if there is any).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torchvision  # noqa: F401 - before napari's OpenGL context (see napari_gradcam._napari._compat)

PLUGIN = "napari-gradcam"
SIZE = (1280, 800)


def settle(seconds: float = 0.3) -> None:
    from qtpy.QtWidgets import QApplication

    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        QApplication.processEvents()
        time.sleep(0.01)


def wait(widget, timeout: float = 300.0) -> None:
    t0 = time.monotonic()
    while widget.busy:
        settle(0.05)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{widget.what} did not finish")
    settle(0.2)
    if widget.last_error:
        raise RuntimeError(widget.last_error)


def short_controls(widgets: dict) -> list:
    """(tab, control, height, size-hint height) of every visible form control shorter than its hint."""
    from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit

    kinds = (QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit)
    out = []
    for name, w in widgets.items():
        for child in w.findChildren(kinds):
            if isinstance(child.parent(), (QComboBox, QAbstractSpinBox)):  # an editable box's own text field
                continue
            if child.isVisibleTo(w) and child.height() < child.sizeHint().height():
                out.append((name, type(child).__name__, child.height(), child.sizeHint().height()))
    return out


def hidden_buttons(name: str, widget, window) -> list:
    """The run buttons of a shown tab that are not wholly inside the window."""
    from qtpy.QtCore import QPoint, QRect

    out = []
    for b in (getattr(widget, "run_button", None), *getattr(widget, "busy_buttons", ())):
        if b is None:
            continue
        rect = QRect(b.mapTo(window, QPoint(0, 0)), b.size())
        if not (b.isVisible() and QRect(QPoint(0, 0), window.size()).contains(rect)):
            out.append((name, b.text()))
    return out


class Shooter:
    """Shows a tab of the panel, checks its buttons, and saves the window."""

    def __init__(self, viewer, panel, out: Path) -> None:
        self.viewer, self.panel, self.out = viewer, panel, out
        self.window = viewer.window._qt_window
        self.hidden: list = []

    def __call__(self, tab: str, file: str | None = None) -> None:
        widget = self.panel.show_tab(tab)
        settle(0.8)
        self.hidden += hidden_buttons(tab, widget, self.window)
        self.window.grab().save(str(self.out / f"widgets_{file or tab}.png"))


def populate(viewer, panel, shoot: Shooter, workdir: Path) -> None:
    """Run every tab once and take its screenshot with what it added."""
    from napari.layers import Layer

    from napari_gradcam._napari.sample_data import sample_mosaic, sample_pneumonia
    from napari_gradcam.phantoms import write_dataset

    w = panel.widgets
    w["model"].load_demo()
    wait(w["model"])
    shoot("model")
    mosaic = [viewer.add_layer(Layer.create(*t)) for t in sample_mosaic()]
    w["tiled"].run(classes="all", method="cam")
    wait(w["tiled"])
    viewer.reset_view()
    shoot("tiled")
    for layer in list(viewer.layers):  # the table keeps the breakdown; the view shows the X-ray
        viewer.layers.remove(layer)
    del mosaic
    image, lesion = [viewer.add_layer(Layer.create(*t)) for t in sample_pneumonia()]
    lesion.visible = True
    lesion.contour = 2
    viewer.reset_view()
    w["classify"].run()
    wait(w["classify"])
    shoot("classify")
    ew = w["explain"]
    ew.run(method="integrated-gradients", target="pneumonia")
    wait(ew)
    shoot("explain", "explain_signed")
    ew.run(method="gradcam", target="all", scale="probability")
    wait(ew)
    viewer.layers.selection.active = image
    shoot("explain")
    w["compare"].run()
    wait(w["compare"])
    shoot("compare")
    for layer in [x for x in viewer.layers if str(x.metadata.get("widget", "")).startswith("compare")]:
        viewer.layers.remove(layer)
    w["features"].run(n=16, display="grid")
    wait(w["features"])
    shoot("features")
    for layer in [x for x in viewer.layers if x.metadata.get("widget") == "features"]:
        viewer.layers.remove(layer)
    viewer.reset_view()
    w["outline"].run()
    wait(w["outline"])
    shoot("outline")
    demo = w["model"].state.bundle
    data = write_dataset(workdir / "phantoms", 30, size=48, seed=0)
    w["train"].run(data_dir=data, output=workdir / "trained.safetensors", image_size=48, epochs=5, batch_size=8,
                   lr="0.003", device="cpu")
    wait(w["train"])
    shoot("train")
    w["model"].state.set_model(demo, "demo model")  # the demo model again, as the other tabs' results say
    viewer.layers.selection.active = image
    viewer.reset_view()
    shoot("explain", "all_docked")  # the panel as `napari-gradcam demo` opens it (README's link)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs"))
    args = ap.parse_args(argv)
    import napari

    from napari_gradcam._napari.panel import PANEL

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-gradcam")
    window = viewer.window._qt_window
    viewer.window.resize(*SIZE)
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, PANEL)
    settle(0.5)
    shoot = Shooter(viewer, panel, out)
    with tempfile.TemporaryDirectory() as tmp:
        populate(viewer, panel, shoot, Path(tmp))
    settle(0.5)
    report = {"window": [window.width(), window.height()], "hidden_buttons": shoot.hidden,
              "short_controls": short_controls(panel.widgets)}
    print(json.dumps(report))
    viewer.close()
    bad = report["hidden_buttons"] or report["short_controls"] or window.width() > SIZE[0] or window.height() > SIZE[1]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

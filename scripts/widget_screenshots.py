"""Screenshots of every widget docked in a real napari window (docs/widgets_*.png).

    xvfb-run -a -s "-screen 0 1280x800x24" python scripts/widget_screenshots.py [--out docs]

A 1,280 x 800 screen with all seven widgets docked: the demo model, the sample pneumonia X-ray
classified and explained (all classes, probability scale), the sample mosaic's tiled heatmaps, the
feature-map grid, a one-epoch training on tiny phantoms, and the newest heatmap against the lesion
outline.  Writes one PNG of each widget's whole form (``widgets_<name>.png``) and one of the window
(``widgets_all_docked.png``); prints the window's height and every form control shorter than its size hint.
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
WIDGETS = {"model": "Model", "classify": "Classify", "explain": "Explain (Grad-CAM)", "tiled": "Tiled heatmaps",
           "features": "Feature maps", "train": "Train", "outline": "Heatmap vs outline"}


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
    """(widget, control, height, size-hint height) of every visible form control shorter than its hint."""
    from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit

    kinds = (QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit)
    out = []
    for name, w in widgets.items():
        for child in w.body.findChildren(kinds):
            if isinstance(child.parent(), (QComboBox, QAbstractSpinBox)):  # an editable box's own text field
                continue
            if child.isVisibleTo(w.body) and child.height() < child.sizeHint().height():
                out.append((name, type(child).__name__, child.height(), child.sizeHint().height()))
    return out


def populate(viewer, widgets: dict, workdir: Path) -> None:
    """Run every widget once, so that the screenshots show results."""
    from napari_gradcam._napari.sample_data import sample_mosaic, sample_pneumonia
    from napari_gradcam.phantoms import write_dataset

    mw, cw, ew, tw, fw, trw, lw = (widgets[k] for k in WIDGETS)
    mw.load_demo()
    wait(mw)
    from napari.layers import Layer

    mosaic = [viewer.add_layer(Layer.create(*t)) for t in sample_mosaic()]
    tw.run(mosaic[0], classes="all", method="cam")
    wait(tw)
    for layer in list(viewer.layers):  # the table keeps the breakdown; the view shows the X-ray
        viewer.layers.remove(layer)
    image, lesion = [viewer.add_layer(Layer.create(*t)) for t in sample_pneumonia()]
    lesion.visible = True
    lesion.contour = 2
    cw.run(image)
    wait(cw)
    fw.run(image, n=16, display="grid")
    wait(fw)
    for layer in [x for x in viewer.layers if x.metadata.get("widget") == "features"]:
        viewer.layers.remove(layer)  # the widget keeps its summary; the view shows the X-ray
    ew.run(image, method="gradcam", target="all", scale="probability")
    wait(ew)
    lw.run(outline=lesion)
    wait(lw)
    demo = mw.state.bundle
    data = write_dataset(workdir / "phantoms", 30, size=48, seed=0)
    trw.run(data_dir=data, output=workdir / "trained.safetensors", image_size=48, epochs=5, batch_size=8,
            lr="0.003", device="cpu")
    wait(trw)
    mw.state.set_model(demo, "demo model")  # the demo model again, as the other widgets' results say
    viewer.layers.selection.active = image
    viewer.reset_view()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs"))
    args = ap.parse_args(argv)
    import napari
    from qtpy.QtWidgets import QApplication

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-gradcam widgets")
    window = viewer.window._qt_window
    window.showMaximized()
    widgets = {key: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for key, name in WIDGETS.items()}
    settle(0.5)
    with tempfile.TemporaryDirectory() as tmp:
        populate(viewer, widgets, Path(tmp))
    settle(1.0)
    screen = QApplication.primaryScreen().availableGeometry()
    report = {"window_height": window.frameGeometry().height(), "screen_height": screen.height(),
              "short_controls": short_controls(widgets)}
    window.grab().save(str(out / "widgets_all_docked.png"))
    for key, w in widgets.items():
        w.body.grab().save(str(out / f"widgets_{key}.png"))
    print(json.dumps(report))
    viewer.close()
    return 0 if report["window_height"] <= report["screen_height"] and not report["short_controls"] else 1


if __name__ == "__main__":
    sys.exit(main())

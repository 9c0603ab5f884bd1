"""Sample data: synthetic chest X-rays with their lesion masks (LayerData tuples)."""

from __future__ import annotations

from ..phantoms import CLASSES, make_mosaic, make_xray

SAMPLE_SIZE = 512
SAMPLE_SEED = 7


def _xray(label: str) -> list[tuple]:
    ph = make_xray(label, size=SAMPLE_SIZE, seed=SAMPLE_SEED)
    name = f"xray_{label}"
    layers: list[tuple] = [(ph.image, {"name": name, "colormap": "gray", "metadata": {"label": label}}, "image")]
    if ph.mask.any():
        layers.append(
            (ph.mask.astype("uint8"), {"name": f"{name}_lesion", "opacity": 0.4, "visible": False,
                                       "metadata": {"label": label, "image": name}}, "labels")
        )
    return layers


def sample_normal() -> list[tuple]:
    return _xray("normal")


def sample_pneumonia() -> list[tuple]:
    return _xray("pneumonia")


def sample_covid() -> list[tuple]:
    return _xray("covid")


def sample_mosaic() -> list[tuple]:
    image, class_map = make_mosaic((3072, 3072), tile=512, seed=SAMPLE_SEED)
    return [
        (image, {"name": "xray_mosaic", "colormap": "gray"}, "image"),
        (class_map.astype("uint8") + 1, {"name": "xray_mosaic_classes", "opacity": 0.25, "visible": False,
                                          "metadata": {"classes": list(CLASSES), "image": "xray_mosaic"}}, "labels"),
    ]


def sample_demo() -> list[tuple]:
    """The pneumonia X-ray, and the demo model loaded into the Model widget (docked if needed)."""
    layers = _xray("pneumonia")
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # noqa: BLE001 - no Qt / no viewer: just the image
        viewer = None
    if viewer is not None:
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, lambda: _load_demo_model(viewer))
    return layers


def _load_demo_model(viewer) -> None:
    from ._base import notify_error

    try:
        _, widget = viewer.window.add_plugin_dock_widget("napari-gradcam", "Model")
        widget.load_demo()
    except Exception as e:  # noqa: BLE001 - the image is there; say why the model is not
        notify_error(e, "Loading the demo model")

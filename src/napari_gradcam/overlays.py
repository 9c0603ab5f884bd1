"""Heatmaps drawn over their image as RGB pictures: one map in a colormap, or several class maps in their
classes' colours (:mod:`.colours`).  Used by the CLI's overlays and the audit's report."""

from __future__ import annotations

from .errors import GradCamError


def overlay_rgb(image, heat, colormap: str = "inferno", alpha: float = 0.5):
    """Image in gray with a colormapped heatmap alpha-blended on top -> (H, W, 3) uint8.

    ``image`` is (H, W) or (H, W, 3|4) of any dtype (scaled by its own min/max), ``heat`` (H, W) in [0, 1].
    """
    import numpy as np
    from matplotlib import colormaps

    from .preprocess import to_channels, to_unit

    gray = to_channels(to_unit(np.asarray(image)), 1)[0]
    heat = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0, 1)
    if heat.shape != gray.shape:
        raise GradCamError(f"The heatmap's shape {heat.shape} differs from the image's {gray.shape}.")
    lut = colormaps[colormap](np.linspace(0, 1, 256))[:, :3].astype(np.float32)
    colored = lut[np.round(heat * 255).astype(np.uint8)]
    out = gray[..., None] * (1 - alpha) + colored * alpha
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def classes_overlay_rgb(image, heatmaps, alpha: float = 0.6, class_indices=None):
    """Overlay of several class heatmaps (C, H, W): each pixel coloured by its strongest class (the
    class's colour of :mod:`napari_gradcam.colours`, by its index ``class_indices[c]`` in the model,
    default ``c``), with opacity ``alpha`` times that class's heat -> (H, W, 3) uint8."""
    import numpy as np

    from .colours import class_colour
    from .preprocess import to_channels, to_unit

    gray = to_channels(to_unit(np.asarray(image)), 1)[0]
    h = np.clip(np.asarray(heatmaps, dtype=np.float32), 0, 1)
    top = h.argmax(0)
    strength = h.max(0)
    indices = range(h.shape[0]) if class_indices is None else class_indices
    colors = np.asarray([class_colour(i) for i in indices], dtype=np.float32).reshape(-1, 3)
    a = (alpha * strength)[..., None]
    out = gray[..., None] * (1 - a) + colors[top] * a
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)

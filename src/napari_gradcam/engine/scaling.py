"""One brightness scale for the heatmaps of several classes.

``explain`` scales every map to its own maximum, which is right for one map: its brightest pixel
is where the model looked hardest.  Shown side by side, maps of several classes then all glow
alike, and a class the model gives p = 0 looks as convincing as the predicted one.
:func:`scale_heatmaps` puts the maps of one image on one scale:

``"probability"`` (the default for several classes)
    each map (already in [0, 1]) times the model's probability of its class: the predicted class
    keeps its full brightness, a class with p = 0 is dark;
``"shared"``
    the raw (ReLU'd) map values on one scale, divided by the largest maximum among the maps: how
    strongly the layer's evidence speaks for each class, in the same units;
``"each"``
    every map to its own maximum (``explain``'s output as it is): the shape of each map, not how
    strong it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import GradCamError

if TYPE_CHECKING:  # pragma: no cover
    from .result import Heatmap

#: the ways several maps can share a scale, with one line each (for menus and ``--help``)
SCALES = {
    "probability": "each map times its class probability (a class with p = 0 is dark)",
    "shared": "raw map values on one scale (the largest maximum among the maps is 1)",
    "each": "each map to its own maximum (every map as bright as the brightest)",
}


def check_scale(scale: str) -> str:
    """``scale`` if it is one of :data:`SCALES` (case ignored); else a one-sentence GradCamError."""
    key = str(scale).strip().lower()
    if key not in SCALES:
        raise GradCamError(f"Unknown heatmap scale {scale!r}; choose one of {', '.join(SCALES)}.")
    return key


def scale_factors(heatmaps: Sequence["Heatmap"], scale: str = "probability") -> np.ndarray:
    """(n,) float64 factor that puts each of the ``n`` maps (each in [0, 1]) on the common ``scale``."""
    scale = check_scale(scale)
    if scale == "each":
        return np.ones(len(heatmaps))
    if scale == "probability":
        return np.array([float(h.score) for h in heatmaps], dtype=np.float64)
    peaks = np.array([max(float(h.max), 0.0) for h in heatmaps], dtype=np.float64)
    top = peaks.max() if len(peaks) else 0.0
    return peaks / top if top > 0 else np.zeros(len(heatmaps))


def scale_heatmaps(heatmaps: Sequence["Heatmap"], scale: str = "probability") -> list["Heatmap"]:
    """The maps of one image on one brightness scale (see the module docstring).

    Parameters
    ----------
    heatmaps : Heatmap results of ``explain`` for one image (``data`` (H, W) float32 in [0, 1]).
    scale : "probability" | "shared" | "each".

    Returns
    -------
    New Heatmap objects (the inputs are not changed) whose ``coarse`` and ``data`` ((H, W) float32 in
    [0, 1]) are multiplied by :func:`scale_factors`; everything else is as it was.
    """
    factors = scale_factors(heatmaps, scale)
    return [h.scaled(f) for h, f in zip(heatmaps, factors)]

"""Heatmap against lesion mask: pointing game, energy inside the mask, IoU and Dice (no model needed)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import GradCamError, ImageError

#: Metrics of one heatmap against one mask, in report order (``pointing_tol`` uses the tolerance).
METRIC_KEYS = (
    "pointing", "pointing_tol", "energy", "mask_share", "energy_ratio",
    "iou_otsu", "dice_otsu", "iou_fixed", "dice_fixed",
)


# ----------------------------------------------------------------------------- checks
def _check_pair(heatmap, mask) -> tuple[np.ndarray, np.ndarray]:
    """Heatmap -> (H, W) float64 (NaN refused), mask -> (H, W) bool; same shape."""
    h = np.asarray(heatmap)
    m = np.asarray(mask)
    if h.ndim != 2:
        raise ImageError(f"A heatmap must be a 2D (H, W) array, not shape {h.shape}.")
    if m.ndim != 2:
        raise ImageError(f"A mask must be a 2D (H, W) array, not shape {m.shape}.")
    if h.shape != m.shape:
        raise ImageError(f"The heatmap {h.shape} and the mask {m.shape} have different shapes; "
                         "they must cover the same image.")
    if h.size == 0:
        raise ImageError("The heatmap is empty.")
    if not (np.issubdtype(h.dtype, np.number) or h.dtype == bool) or np.iscomplexobj(h):
        raise ImageError(f"A heatmap must hold real numbers, not {h.dtype}.")
    h = h.astype(np.float64, copy=False)
    if not np.isfinite(h).all():
        raise ImageError("The heatmap has NaN or infinite values.")
    return h, (m != 0) if m.dtype != bool else m


def _nan_if(cond: bool, value: float) -> float:
    return float("nan") if cond else float(value)


# ----------------------------------------------------------------------------- heatmap vs mask
def pointing_game(heatmap, mask, tolerance: float = 0) -> bool:
    """Whether the heatmap's maximum falls on the mask (the pointing game).

    Parameters
    ----------
    heatmap : (H, W) array of float
        Any real values; larger means more relevant.
    mask : (H, W) array of bool (or int: nonzero is the lesion)
    tolerance : float, optional
        Pixels.  A maximum within this Euclidean distance of a mask pixel is a hit, i.e. the mask
        is dilated by a disk of this radius (Zhang et al. use 15 px at 224 px).  0: the maximum's
        own pixel must be in the mask.

    Returns
    -------
    bool
        True for a hit.  The maximum is ``numpy.argmax`` (the first of tied maxima in row-major
        order).  A heatmap whose maximum is <= 0 (e.g. all zero) points nowhere: False.  An empty
        mask: False.

    Raises
    ------
    ImageError
        Shapes differ, are not 2D, or the heatmap has NaN/inf.

    Examples
    --------
    >>> m = np.zeros((10, 10), bool); m[2:4, 2:4] = True
    >>> h = np.zeros((10, 10)); h[3, 3] = 1
    >>> pointing_game(h, m)
    True
    >>> h = np.zeros((10, 10)); h[3, 6] = 1
    >>> pointing_game(h, m), pointing_game(h, m, tolerance=3)
    (False, True)
    """
    h, m = _check_pair(heatmap, mask)
    if tolerance < 0:
        raise GradCamError(f"The pointing-game tolerance must be >= 0 pixels, not {tolerance}.")
    flat = int(np.argmax(h))
    if not h.flat[flat] > 0 or not m.any():
        return False
    r, c = divmod(flat, h.shape[1])
    if m[r, c]:
        return True
    if tolerance <= 0:
        return False
    t = int(math.floor(tolerance))
    r0, r1, c0, c1 = max(r - t, 0), min(r + t + 1, h.shape[0]), max(c - t, 0), min(c + t + 1, h.shape[1])
    rr, cc = np.nonzero(m[r0:r1, c0:c1])
    if rr.size == 0:
        return False
    d2 = (rr + r0 - r) ** 2 + (cc + c0 - c) ** 2
    return bool(d2.min() <= tolerance * tolerance)


def scaled_tolerance(tolerance: float, shape: tuple[int, ...], at: float | None = None) -> float:
    """A pointing tolerance given at ``at`` px, for an image of ``shape`` (H, W[, C]).

    ``tolerance * max(H, W) / at`` (Zhang et al.'s 15 px are meant at 224 px, so 15 at 224 is about
    34 px for a 512 px image); ``at=None`` returns ``tolerance`` unchanged.

    >>> scaled_tolerance(15, (512, 400), 224)
    34.285714285714285
    """
    if at is None:
        return float(tolerance)
    return float(tolerance) * max(shape[:2]) / float(at)


def mask_share(mask) -> float:
    """The mask's share of the image: (number of mask pixels) / (H * W), in [0, 1].

    Parameters
    ----------
    mask : (H, W) array of bool (or int: nonzero is the lesion)
    """
    m = np.asarray(mask)
    if m.size == 0:
        raise ImageError("The mask is empty (no pixels).")
    return float(np.count_nonzero(m) / m.size)


def energy_inside(heatmap, mask) -> float:
    """Share of the heatmap's mass inside the mask.

    Parameters
    ----------
    heatmap : (H, W) array of float
        Negative values are clipped to 0 (only positive evidence counts).
    mask : (H, W) array of bool (or int: nonzero is the lesion)

    Returns
    -------
    float
        ``sum(heatmap[mask]) / sum(heatmap)`` in [0, 1]; 0 for an all-zero heatmap.

    Examples
    --------
    >>> m = np.zeros((10, 10), bool); m[:5, :5] = True
    >>> h = np.zeros((10, 10)); h[:5, :] = 1        # half the map's rows, half of them on the mask
    >>> energy_inside(h, m)
    0.5
    """
    h, m = _check_pair(heatmap, mask)
    h = np.clip(h, 0, None)
    total = h.sum()
    if not total > 0:
        return 0.0
    return float(h[m].sum() / total)


def threshold_scores(heatmap, mask, level: "float | str" = 0.5) -> dict[str, float]:
    """IoU and Dice of the thresholded heatmap against the mask.

    Parameters
    ----------
    heatmap : (H, W) array of float
    mask : (H, W) array of bool (or int: nonzero is the lesion)
    level : float in [0, 1] or "otsu"
        A float keeps the pixels ``>= level * heatmap.max()`` (for the [0, 1] heatmaps of
        :func:`napari_gradcam.engine` that is ``>= level``).  ``"otsu"`` keeps the pixels
        ``> skimage.filters.threshold_otsu(heatmap)``.  An all-zero (or constant <= 0) heatmap keeps
        no pixel.

    Returns
    -------
    dict
        ``iou`` = |A & B| / |A | B| and ``dice`` = 2 |A & B| / (|A| + |B|), floats in [0, 1], and
        ``threshold`` (the absolute value used) and ``area`` (share of the image kept).  Both NaN
        when the mask and the thresholded map are both empty (undefined).

    Examples
    --------
    >>> m = np.zeros((10, 10), bool); m[:5, :5] = True          # 25 px
    >>> h = np.zeros((10, 10)); h[:5, :] = 1                    # 50 px, 25 of them on the mask
    >>> threshold_scores(h, m, 0.5)["iou"], threshold_scores(h, m, "otsu")["dice"]
    (0.5, 0.6666666666666666)
    """
    h, m = _check_pair(heatmap, mask)
    hmax = float(h.max())
    if isinstance(level, str):
        if level.strip().lower() != "otsu":
            raise GradCamError(f"Unknown threshold {level!r}; use 'otsu' or a number between 0 and 1.")
        if hmax <= 0 or hmax == float(h.min()):
            t, keep = hmax, np.zeros(h.shape, bool)
        else:
            from skimage.filters import threshold_otsu

            t = float(threshold_otsu(h))
            keep = h > t
    else:
        level = float(level)
        if not 0 <= level <= 1:
            raise GradCamError(f"The threshold level must be between 0 and 1 (a fraction of the maximum), not {level}.")
        t = level * hmax
        keep = h >= t if hmax > 0 else np.zeros(h.shape, bool)
    inter = np.count_nonzero(keep & m)
    n_keep, n_mask = np.count_nonzero(keep), np.count_nonzero(m)
    union = n_keep + n_mask - inter
    return {
        "iou": _nan_if(union == 0, inter / union if union else 0),
        "dice": _nan_if(union == 0, 2 * inter / (n_keep + n_mask) if union else 0),
        "threshold": float(t),
        "area": float(n_keep / h.size),
    }


def localisation_scores(heatmap, mask, tolerance: float = 0, level: float = 0.5) -> dict[str, Any]:
    """All heatmap-versus-mask metrics (no model needed).

    Parameters
    ----------
    heatmap : (H, W) array of float
    mask : (H, W) array of bool (or int: nonzero is the lesion)
    tolerance : float
        Pointing-game tolerance in pixels for ``pointing_tol``.
    level : float
        Fixed threshold, a fraction of the heatmap's maximum, for ``iou_fixed`` / ``dice_fixed``.

    Returns
    -------
    dict
        ``pointing`` (bool, no tolerance), ``pointing_tol`` (bool, with ``tolerance``), ``energy``,
        ``mask_share``, ``energy_ratio`` (energy / mask_share; NaN for an empty mask),
        ``iou_otsu``, ``dice_otsu``, ``iou_fixed``, ``dice_fixed`` (floats).
    """
    h, m = _check_pair(heatmap, mask)
    share = mask_share(m)
    energy = energy_inside(h, m)
    otsu = threshold_scores(h, m, "otsu")
    fixed = threshold_scores(h, m, level)
    hit = pointing_game(h, m, 0)
    return {
        "pointing": hit,
        "pointing_tol": hit if tolerance <= 0 else pointing_game(h, m, tolerance),
        "energy": energy,
        "mask_share": share,
        "energy_ratio": _nan_if(share == 0, energy / share if share else 0),
        "iou_otsu": otsu["iou"],
        "dice_otsu": otsu["dice"],
        "iou_fixed": fixed["iou"],
        "dice_fixed": fixed["dice"],
    }

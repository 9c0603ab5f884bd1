"""From probabilities to a class: the arg-max, or for two classes a threshold chosen on validation images.

A model trained by :mod:`napari_gradcam.train` with two classes stores, in
``bundle.config.training["threshold"]``, the probability of its second class (index 1, the "positive"
class, e.g. PNEUMONIA after NORMAL) at or above which that class is predicted.  It is chosen on the
held-out patients for balanced accuracy (:func:`choose_threshold`).  ``predict`` and ``evaluate`` use it
through :func:`predicted_classes`; probabilities themselves are never changed.

Examples
--------
>>> import numpy as np
>>> p = np.array([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]])
>>> predicted_classes(p).tolist(), predicted_classes(p, threshold=0.7).tolist()
([0, 1, 1], [0, 0, 1])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .bundle import ModelBundle


def decision_threshold(bundle: "ModelBundle") -> float | None:
    """The stored decision threshold of a two-class bundle, or None (then the arg-max decides)."""
    t = (bundle.config.training or {}).get("threshold")
    if len(bundle.classes) != 2 or isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
        return None
    return float(t)


def predicted_classes(probs: Any, threshold: float | None = None) -> np.ndarray:
    """Class indices (N,) int64 of probabilities (N, n_classes): class 1 where ``probs[:, 1] >= threshold``
    for two classes with a threshold, else the arg-max.  A single row (n_classes,) gives a 0-d array."""
    p = np.asarray(probs, dtype=np.float64)
    if threshold is None or p.shape[-1] != 2:
        return p.argmax(-1).astype(np.int64)
    return (p[..., 1] >= threshold).astype(np.int64)


def choose_threshold(labels: Any, probs: Any, steps: int = 161) -> float | None:
    """The threshold on ``probs[:, 1]`` that maximises balanced accuracy on ``(labels, probs)``.

    Candidates are evenly spaced in log-odds between -4 and 4 (probabilities 0.018 to 0.982); where
    several reach the maximum (a plateau, as on an easy validation set) the middle one is taken, which
    keeps the largest margin on both sides.  None unless there are two classes, both present.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or len(np.unique(y)) != 2:
        return None
    logits = np.linspace(-4.0, 4.0, steps)
    cands = 1.0 / (1.0 + np.exp(-logits))
    pred = p[:, 1][None, :] >= cands[:, None]  # (steps, N)
    tpr = (pred & (y == 1)).sum(1) / max(1, int((y == 1).sum()))
    tnr = (~pred & (y == 0)).sum(1) / max(1, int((y == 0).sum()))
    bal = (tpr + tnr) / 2
    best = np.flatnonzero(bal >= bal.max() - 1e-12)
    return float(cands[best[len(best) // 2]])

"""Bootstrap intervals, vectorised: one resample-weight matrix, every figure computed from it at once.

A bootstrap resample draws ``n`` units with replacement; a unit is an image, or a patient (then the
resample holds each drawn patient's images, all of them, as many times as the patient was drawn).
Every figure here is a weighted statistic of per-image values, so a resample is fully described by its
*weights*: how many times each image is in it.  :func:`resample_weights` turns a (B, n_units) index
matrix of draws into a (B, N) weight matrix, and the figures of all B resamples come from a few matrix
operations (confusion matrices as ``weights @ one_hot``; ROC AUC as a weighted Mann-Whitney statistic
over the scores sorted once).  The interval is the percentile interval (Efron & Tibshirani 1993,
ch. 13) of the figure over the resamples; resamples where a figure is undefined (a class that was not
drawn) are left out of that figure's interval.

Examples
--------
>>> import numpy as np
>>> w = resample_weights(4, 3, seed=0, groups=["a", "a", "b", "c"])
>>> w.shape, bool((w[:, 0] == w[:, 1]).all())   # a patient's images are drawn together
((3, 4), True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import GradCamError

__all__ = ["DEFAULT_RESAMPLES", "Bootstrap", "resample_weights", "percentile_interval", "intervals",
           "confusion_counts", "MAX_AUC_WORK",
           "classification_intervals", "figure_keys", "figure_name", "figure_value",
           "classification_samples", "roc_auc_samples", "weighted_mean_samples"]

#: Resamples drawn by default (``--bootstrap``).
DEFAULT_RESAMPLES = 1000
#: Most (resamples x images x classes) the ROC AUC's interval is computed for (a few seconds); beyond it
#: (e.g. 1,000 classes) ``roc_auc_ci`` is None and the report's ``bootstrap`` says why.
MAX_AUC_WORK = 2 * 10**9


@dataclass(frozen=True)
class Bootstrap:
    """How to resample: ``resamples`` draws (0: no intervals), ``seed``, ``level`` (0.95: a 95 % interval).

    ``groups`` (one id per image, e.g. the patient) makes each draw a whole group; None draws images.
    """

    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    level: float = 0.95
    groups: "Sequence[Any] | None" = None

    def __post_init__(self):
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, (int, np.integer)) or self.resamples < 0:
            raise GradCamError(
                f"The number of bootstrap resamples must be a whole number >= 0, not {self.resamples!r}.")
        if not 0 < float(self.level) < 1:
            raise GradCamError(f"The interval's level must be between 0 and 1 (e.g. 0.95), not {self.level!r}.")

    def weights(self, n: int) -> np.ndarray:
        """The (resamples, n) weight matrix of ``n`` images (see :func:`resample_weights`)."""
        if self.groups is not None and len(self.groups) != n:
            raise GradCamError(f"{n} images but {len(self.groups)} group ids were given for the bootstrap.")
        return resample_weights(n, self.resamples, self.seed, self.groups)

    def settings(self, n: int) -> dict[str, Any]:
        """JSON-ready description: resamples, seed, level, method, unit ("patient" or "image") and units."""
        units = n if self.groups is None else len(set(self.groups))
        return {"resamples": int(self.resamples), "seed": int(self.seed), "level": float(self.level),
                "method": "percentile", "unit": "image" if self.groups is None else "patient", "units": int(units)}


def resample_weights(n: int, resamples: int, seed: int = 0, groups: "Sequence[Any] | None" = None) -> np.ndarray:
    """How many times each of ``n`` images is in each bootstrap resample.

    Parameters
    ----------
    n : int
        Images.
    resamples : int
        Resamples B.
    seed : int
        Seed of numpy's ``default_rng``: the same seed gives the same resamples.
    groups : sequence of hashable, length n, optional
        A unit id per image (e.g. the patient).  The G distinct ids are drawn G times with replacement
        and every image of a drawn unit comes along; without groups each image is its own unit.

    Returns
    -------
    ndarray of int32, (B, n)
        ``w[b, i]`` = copies of image i in resample b; equal for images of one unit.  The draws are an
        index matrix ``rng.integers(0, G, (B, G))`` over the units numbered in order of first appearance,
        so G units draw as G images would under the same seed.
    """
    if groups is None:
        unit = np.arange(n)
        n_units = n
    else:
        _, first, inverse = np.unique(np.asarray([str(g) for g in groups]), return_index=True, return_inverse=True)
        rank = np.empty(first.size, np.int64)
        rank[np.argsort(first)] = np.arange(first.size)  # units numbered in order of first appearance
        unit = rank[inverse.ravel()]
        n_units = int(first.size)
    if resamples == 0 or n == 0:
        return np.zeros((resamples, n), np.int32)
    draws = np.random.default_rng(seed).integers(0, n_units, size=(resamples, n_units))
    offsets = (np.arange(resamples) * n_units)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=resamples * n_units).reshape(resamples, n_units)
    return counts[:, unit].astype(np.int32)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> "list[float] | None":
    """``[low, high]``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the finite samples (B,),
    or None when fewer than half of them are finite (the figure is mostly undefined)."""
    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0 or s.size < 0.5 * np.asarray(samples).size:
        return None
    lo, hi = np.quantile(s, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def confusion_counts(weights: np.ndarray, y: np.ndarray, pred: np.ndarray, n_classes: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The weighted confusion counts of B resamples without the (K, K) matrices: (true positives (B, K),
    support = row sums (B, K), predicted = column sums (B, K), total (B,)), float64.

    Each is ``weights`` (B, N) times a sparse one-hot (N, K), so the cost is O(B N) for any K.
    """
    from scipy.sparse import csr_matrix

    y = np.asarray(y, np.int64)
    pred = np.asarray(pred, np.int64)
    w = np.asarray(weights, np.float64)
    n = y.size

    def per_class(cls: np.ndarray, keep: np.ndarray) -> np.ndarray:
        onehot = csr_matrix((keep.astype(np.float64), (np.arange(n), cls)), shape=(n, n_classes))
        return np.asarray((onehot.T @ w.T).T)

    ones = np.ones(n, bool)
    return per_class(y, y == pred), per_class(y, ones), per_class(pred, ones), w.sum(1)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def roc_auc_samples(weights: np.ndarray, y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """ROC AUC of each resample (B,) float64, NaN where a class was not drawn.

    As :func:`napari_gradcam.metrics.roc_auc`: two classes use ``probs[:, 1]``; more classes the
    one-vs-rest AUC of each class (rows normalised to sum 1), macro-averaged.  Each binary AUC is the
    weighted Mann-Whitney statistic: the share of (positive, negative) pairs ranked right, ties
    counting one half, pairs weighted by the product of the two images' weights.
    """
    p = np.asarray(probs, np.float64)
    y = np.asarray(y, np.int64)
    w = np.asarray(weights, np.float64)
    if p.shape[1] == 2:
        return _binary_auc(w, y == 1, p[:, 1])
    p = p / np.clip(p.sum(1, keepdims=True), 1e-12, None)
    per_class = np.stack([_binary_auc(w, y == k, p[:, k]) for k in range(p.shape[1])])
    return per_class.mean(0)  # NaN where any class is undefined, like roc_auc's None


def _binary_auc(w: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    order = np.argsort(score, kind="stable")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # one level per distinct score
    ws = np.ascontiguousarray(w.T[order])  # (N, B): images in score order, rows contiguous
    pos = positive[order][:, None]
    wpos = np.add.reduceat(np.where(pos, ws, 0.0), starts, axis=0)  # (levels, B)
    wneg = np.add.reduceat(np.where(pos, 0.0, ws), starts, axis=0)
    below = np.cumsum(wneg, axis=0) - wneg
    num = (wpos * (below + 0.5 * wneg)).sum(0)
    return _divide(num, wpos.sum(0) * wneg.sum(0))


def auc_affordable(shape: tuple[int, int], n_classes: int) -> bool:
    """Whether the ROC AUC of (B, N) resamples of ``n_classes`` classes stays within :data:`MAX_AUC_WORK`."""
    return shape[0] * shape[1] * (n_classes if n_classes > 2 else 1) <= MAX_AUC_WORK


def classification_samples(weights: np.ndarray, y, probs, pred, classes: Sequence[str]) -> dict[str, Any]:
    """Every classification figure of each resample: {"accuracy", "balanced_accuracy", "roc_auc": (B,),
    "sensitivity", "specificity": {class: (B,)}}, float64 with NaN where undefined.

    ``pred`` (N,) are the fixed predicted classes (at the model's threshold); balanced accuracy is the
    mean recall over the classes present in the resample, as scikit-learn computes it.
    """
    k = len(classes)
    tp, support, called, total = confusion_counts(weights, y, pred, k)
    recall = _divide(tp, support)
    spec = _divide(total[:, None] - support - called + tp, total[:, None] - support)
    with np.errstate(invalid="ignore"):
        balanced = np.nanmean(np.where(support > 0, recall, np.nan), axis=1)
    return {
        "accuracy": _divide(tp.sum(1), total),
        "balanced_accuracy": balanced,
        "roc_auc": (roc_auc_samples(weights, y, probs) if auc_affordable(np.shape(weights), k)
                    else np.full(len(total), np.nan)),
        "sensitivity": {c: recall[:, i] for i, c in enumerate(classes)},
        "specificity": {c: spec[:, i] for i, c in enumerate(classes)},
    }


def weighted_mean_samples(weights: np.ndarray, values) -> np.ndarray:
    """The mean of per-image ``values`` (N,) in each resample (B,); NaN/None values are left out (the
    mean of the defined ones), NaN where a resample has none."""
    v = np.array([np.nan if x is None else float(x) for x in values], np.float64)
    ok = np.isfinite(v)
    w = np.asarray(weights, np.float64)[:, ok]
    return _divide(w @ v[ok], w.sum(1))


def intervals(samples: Any, level: float = 0.95) -> Any:
    """The same nesting as ``samples`` ((B,) arrays, or dicts of them) with each array replaced by its
    :func:`percentile_interval` ``[low, high]`` (or None)."""
    if isinstance(samples, dict):
        return {k: intervals(v, level) for k, v in samples.items()}
    return percentile_interval(samples, level)


def classification_intervals(y, probs, classes: Sequence[str], threshold: "float | None",
                             boot: Bootstrap) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ``<figure>_ci`` keys of a classification report, the per-resample figures).

    Returns
    -------
    ci : dict
        ``accuracy_ci``, ``balanced_accuracy_ci``, ``roc_auc_ci`` ([low, high] or None),
        ``sensitivity_ci`` and ``specificity_ci`` ({class: [low, high] or None}) and ``bootstrap``
        (:meth:`Bootstrap.settings`).
    samples : dict
        :func:`classification_samples` of the resamples (for differences between data sets).
    """
    from ..decision import predicted_classes

    y = np.asarray(y, np.int64)
    p = np.asarray(probs, np.float64)
    w = boot.weights(len(y))
    samples = classification_samples(w, y, p, predicted_classes(p, threshold), classes)
    ci = {f"{k}_ci": v for k, v in intervals(samples, boot.level).items()}
    ci["bootstrap"] = boot.settings(len(y))
    if not auc_affordable(w.shape, len(classes)):
        ci["bootstrap"]["note"] = (f"No interval for the ROC AUC: {len(classes)} classes x {len(y)} images x "
                                   f"{boot.resamples} resamples is too costly; use fewer resamples.")
    return ci, samples


#: The scalar figures of a classification report, as (key, class or None).
def figure_keys(classes: Sequence[str]) -> list[tuple[str, "str | None"]]:
    """Every figure of a classification report as (key, class or None), in display order."""
    keys: list[tuple[str, str | None]] = [("accuracy", None), ("balanced_accuracy", None), ("roc_auc", None)]
    keys += [(k, c) for k in ("sensitivity", "specificity") for c in classes]
    return keys


def figure_value(report: dict[str, Any], key: str, cls: "str | None", suffix: str = "") -> Any:
    """``report[key + suffix]`` (for a class: ``report[key + suffix][cls]``), or None."""
    v = report.get(key + suffix)
    if cls is not None:
        v = (v or {}).get(cls)
    return v


def figure_name(key: str, cls: "str | None") -> str:
    """A figure's name in flags and tables: ``accuracy``, ``sensitivity[PNEUMONIA]``."""
    return key if cls is None else f"{key}[{cls}]"


def roc_band(weights: np.ndarray, positive, score, fpr: np.ndarray, level: float = 0.95
             ) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise interval of the ROC curve: the true positive rate's ``level`` percentile interval at each
    false positive rate of ``fpr`` (M,) over the resamples; (low (M,), high (M,)) float64.

    Each resample's curve is its weighted cumulative counts of positives and negatives over the scores
    sorted once (high to low), read at ``fpr`` by linear interpolation.
    """
    positive = np.asarray(positive, bool)
    s = -np.asarray(score, np.float64)
    order = np.argsort(s, kind="stable")
    ends = np.r_[np.flatnonzero(s[order][1:] != s[order][:-1]), len(s) - 1]  # last image of each score level
    w = np.asarray(weights, np.float64)[:, order]
    pos = positive[order]
    tp = np.cumsum(w * pos, axis=1)[:, ends]  # ties move together, as scikit-learn's roc_curve
    fp = np.cumsum(w * ~pos, axis=1)[:, ends]
    ok = (tp[:, -1] > 0) & (fp[:, -1] > 0)
    tpr = np.hstack([np.zeros((len(w), 1)), tp / np.where(tp[:, -1:] > 0, tp[:, -1:], 1)])
    fpr_b = np.hstack([np.zeros((len(w), 1)), fp / np.where(fp[:, -1:] > 0, fp[:, -1:], 1)])
    curves = np.array([np.interp(fpr, f, t) for f, t, good in zip(fpr_b, tpr, ok) if good])
    if curves.size == 0:
        return np.full(len(fpr), np.nan), np.full(len(fpr), np.nan)
    lo, hi = np.quantile(curves, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return lo, hi

"""Evaluation metrics, computed with scikit-learn.

Classification (this module): accuracy, balanced accuracy, ROC AUC, per-class sensitivity and
specificity, the confusion matrix; a readable table and a PNG (confusion matrix + ROC curves).

* ROC AUC: binary problems use the probability of the second class (index 1, the "positive" class,
  e.g. PNEUMONIA after NORMAL); more classes use one-vs-rest, macro-averaged.  A class that is absent
  from ``y_true`` makes the AUC undefined: it is reported as ``None``.
* Sensitivity of class k (recall, true-positive rate) = TP_k / (TP_k + FN_k); specificity of class k
  (true-negative rate) = TN_k / (TN_k + FP_k), both read off the confusion matrix (rows = truth,
  columns = prediction).  ``None`` where the denominator is 0.

Localisation metrics (pointing game, energy inside masks) belong here too (see other functions).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import GradCamError

__all__ = ["classification_report", "format_report", "plot_report", "save_report"]


def _check(y_true, probs, classes) -> tuple[np.ndarray, np.ndarray, list[str]]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    classes = [str(c) for c in classes]
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] != len(classes):
        raise GradCamError(
            f"Probabilities of shape {p.shape} do not fit {y.shape[0]} labels and {len(classes)} classes."
        )
    if y.size == 0:
        raise GradCamError("There are no images to evaluate.")
    if y.min() < 0 or y.max() >= len(classes):
        raise GradCamError(f"Labels must be class indices between 0 and {len(classes) - 1}.")
    return y, p, classes


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def roc_auc(y_true, probs) -> float | None:
    """ROC AUC (binary: probability of class 1; multi-class: one-vs-rest macro), or None if undefined."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    n_classes = p.shape[1]
    if len(np.unique(y)) < n_classes:
        return None
    if n_classes == 2:
        return float(roc_auc_score(y, p[:, 1]))
    # sklearn wants rows summing to 1 for ovr
    p = p / np.clip(p.sum(1, keepdims=True), 1e-12, None)
    return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(n_classes))))


def classification_report(y_true, probs, classes: Sequence[str], threshold: float | None = None,
                          bootstrap: "Any | None" = None) -> dict[str, Any]:
    """Classification metrics of predicted probabilities.

    Parameters
    ----------
    y_true : array-like of int, (N,)
        True class indices.
    probs : array-like of float, (N, n_classes)
        Predicted probabilities (rows sum to 1); the prediction is the argmax.
    classes : sequence of str
        Class names, in column order.
    threshold : float, optional
        Two classes only: predict the second class where its probability is at least this (a model's
        stored decision threshold, see :mod:`napari_gradcam.decision`); default the arg-max.
    bootstrap : napari_gradcam.stats.Bootstrap, optional
        Add each figure's bootstrap interval (resamples, seed, level, and patients to resample whole).

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy``, ``roc_auc`` (float or None), ``sensitivity`` and
        ``specificity`` ({class: float or None}), ``confusion_matrix`` (list of lists, rows = truth,
        columns = prediction), ``classes``, ``n`` (images) and ``support`` ({class: images}).  With
        ``bootstrap``: ``accuracy_ci``, ``balanced_accuracy_ci``, ``roc_auc_ci`` ([low, high] or None),
        ``sensitivity_ci``, ``specificity_ci`` ({class: [low, high] or None}) and ``bootstrap`` (settings).

    Examples
    --------
    >>> r = classification_report([0, 0, 1, 1], [[.9, .1], [.4, .6], [.2, .8], [.3, .7]], ["a", "b"])
    >>> r["accuracy"], r["sensitivity"]["b"], r["specificity"]["b"]
    (0.75, 1.0, 0.5)
    """
    from sklearn.metrics import accuracy_score, confusion_matrix

    from .decision import predicted_classes

    y, p, classes = _check(y_true, probs, classes)
    pred = predicted_classes(p, threshold)
    labels = list(range(len(classes)))
    cm = confusion_matrix(y, pred, labels=labels)
    sens, spec = _one_vs_rest(cm, classes)
    report = {
        "n": int(y.size),
        "classes": classes,
        "support": {c: int(cm[k].sum()) for k, c in enumerate(classes)},
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": _balanced_accuracy(y, pred),
        "roc_auc": roc_auc(y, p),
        "sensitivity": sens,
        "specificity": spec,
        "confusion_matrix": cm.astype(int).tolist(),
        **({"threshold": float(threshold)} if threshold is not None and len(classes) == 2 else {}),
    }
    if bootstrap is not None and bootstrap.resamples:
        from .stats.bootstrap import classification_intervals

        report.update(classification_intervals(y, p, classes, threshold, bootstrap)[0])
    return report


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """scikit-learn's balanced accuracy, without its warning when a class is absent from ``y``."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # balanced accuracy warns when a class is absent
        return float(balanced_accuracy_score(y, pred))


def _one_vs_rest(cm: np.ndarray, classes: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each class's sensitivity and specificity (float or None) from a confusion matrix (rows = truth)."""
    total = cm.sum()
    sens, spec = {}, {}
    for k, c in enumerate(classes):
        tp = cm[k, k]
        fn = cm[k].sum() - tp
        fp = cm[:, k].sum() - tp
        tn = total - tp - fn - fp
        sens[c] = _ratio(tp, tp + fn)
        spec[c] = _ratio(tn, tn + fp)
    return sens, spec


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


#: Above this many classes :func:`format_report` leaves the confusion matrix to the JSON report.
MAX_PRINTED_MATRIX = 20


def _ci(report: dict[str, Any], key: str, cls: str | None = None, pct: bool = False) -> str:
    """`` [low, high]`` of ``report[key + "_ci"]`` (a class's for sensitivity/specificity), or ""."""
    ci = report.get(f"{key}_ci")
    if cls is not None:
        ci = (ci or {}).get(cls)
    if ci is None:
        return ""
    return f" [{_fmt(ci[0], pct).rstrip('%')}, {_fmt(ci[1], pct).rstrip('%')}]"


def _boot_line(report: dict[str, Any]) -> list[str]:
    b = report.get("bootstrap")
    if not b:
        return []
    return [f"[{100 * b['level']:g} % bootstrap intervals: {b['resamples']} resamples of "
            f"{b['units']} {b['unit']}s, seed {b['seed']}]"]


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of a :func:`classification_report` (for terminals and logs), with the
    intervals ``[low, high]`` where the report has them."""
    classes = report["classes"]
    w = max(9, *(len(c) for c in classes)) + 2
    cw = 13 if "sensitivity_ci" not in report else 26
    lines = [
        f"images             {report.get('n', sum(map(sum, report['confusion_matrix'])))}",
        f"accuracy           {_fmt(report['accuracy'], True)}{_ci(report, 'accuracy', pct=True)}",
        f"balanced accuracy  {_fmt(report['balanced_accuracy'], True)}{_ci(report, 'balanced_accuracy', pct=True)}",
        f"ROC AUC            {_fmt(report['roc_auc'])}{_ci(report, 'roc_auc')}",
        *_boot_line(report),
        *([f"decision           {classes[1]} where p >= {report['threshold']:.3f} (the model's threshold)"]
          if report.get("threshold") is not None else []),
        "",
        f"{'class':<{w}}{'support':>9}{'sensitivity':>{cw}}{'specificity':>{cw}}",
    ]
    support = report.get("support") or {c: sum(r) for c, r in zip(classes, report["confusion_matrix"])}
    for c in classes:
        sens = _fmt(report['sensitivity'][c], True) + _ci(report, "sensitivity", c, True)
        spec = _fmt(report['specificity'][c], True) + _ci(report, "specificity", c, True)
        lines.append(f"{c:<{w}}{support[c]:>9}{sens:>{cw}}{spec:>{cw}}")
    if len(classes) > MAX_PRINTED_MATRIX:
        lines += ["", f"confusion matrix: {len(classes)} x {len(classes)}, too large to print; "
                      "it is in the JSON report (--json)"]
        return "\n".join(lines)
    lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
    cw = max(7, *(len(c) + 1 for c in classes))
    lines.append(" " * w + "".join(f"{c:>{cw}}" for c in classes))
    for c, row in zip(classes, report["confusion_matrix"]):
        lines.append(f"{c:<{w}}" + "".join(f"{v:>{cw}}" for v in row))
    return "\n".join(lines)


def save_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write a report as JSON (UTF-8, indented), atomically: a failed write leaves the previous file."""
    from .outputs import atomic_write_text

    return atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def plot_report(report: dict[str, Any], y_true, probs, path: str | Path, bootstrap: "Any | None" = None) -> Path:
    """Save a PNG with the confusion matrix (left) and ROC curves (right; one per class, one-vs-rest).

    The titles carry the report's intervals where it has them; with ``bootstrap``
    (:class:`napari_gradcam.stats.Bootstrap`, the resampling of the report) each ROC curve gets its
    pointwise 95 % band. The format follows the extension (.png, .pdf, .svg, .jpg); the file is
    written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    y, p, classes = _check(y_true, probs, report["classes"])
    cm = np.asarray(report["confusion_matrix"])
    fig = Figure(figsize=(10, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # the object API: no global backend switch (napari's Qt backend stays as it is)
    ax1, ax2 = fig.subplots(1, 2)
    im = ax1.imshow(cm, cmap="Blues")
    ax1.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax1.set_yticks(range(len(classes)), classes)
    ax1.set_xlabel("predicted")
    ax1.set_ylabel("true")
    thresh = cm.max() / 2 if cm.size else 0
    for (i, j), v in np.ndenumerate(cm):
        ax1.text(j, i, str(v), ha="center", va="center", color="white" if v > thresh else "black")
    ax1.set_title(f"accuracy {_fmt(report['accuracy'], True)}{_ci(report, 'accuracy', pct=True)}\n"
                  f"balanced {_fmt(report['balanced_accuracy'], True)}{_ci(report, 'balanced_accuracy', pct=True)}")
    fig.colorbar(im, ax=ax1, shrink=0.8)
    binary = len(classes) == 2
    for k, c in enumerate(classes):
        if binary and k == 0:
            continue
        pos = y == k
        if pos.all() or not pos.any():
            continue
        fpr, tpr, _ = roc_curve(pos.astype(int), p[:, k])
        line, = ax2.plot(fpr, tpr, label=c if not binary else f"{c} vs {classes[0]}")
        if bootstrap is not None and bootstrap.resamples:
            from .stats.bootstrap import roc_band

            grid = np.linspace(0, 1, 101)
            lo, hi = roc_band(bootstrap.weights(len(y)), pos, p[:, k], grid, bootstrap.level)
            ax2.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    ax2.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
    ax2.set_xlim(0, 1)
    ax2.set_ylim(0, 1.01)
    ax2.set_xlabel("false positive rate (1 - specificity)")
    ax2.set_ylabel("true positive rate (sensitivity)")
    ax2.set_title(f"ROC, AUC {_fmt(report['roc_auc'])}{_ci(report, 'roc_auc')}"
                  + (f"\n(95 % bootstrap intervals by {report['bootstrap']['unit']})"
                     if report.get("bootstrap") else ""))
    if ax2.lines[:-1]:
        ax2.legend(loc="lower right")
    from .outputs import atomic_write

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".") or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt))

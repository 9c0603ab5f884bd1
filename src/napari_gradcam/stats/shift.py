"""Internal vs external: the same model on two data sets side by side, the drop, and the threshold's part.

A model validated on a split of its own data (internal) can lose much on data from elsewhere (external):
issue 23 quotes specificity 0.97 on a patient-held-out split and 0.585 on the data set's own test split.
:func:`compare_sets` puts every figure of both sets, their intervals and the drop (internal - external,
with the interval of the difference of independent resamples) in one table, and
:func:`threshold_effects` shows what the decision threshold does on each set: sensitivity and
specificity at the model's stored threshold and at the threshold that balances them on that set.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .bootstrap import figure_keys, figure_name, figure_value, percentile_interval

__all__ = ["balancing_threshold", "threshold_effects", "compare_sets", "format_comparison"]


def balancing_threshold(y, probs) -> "float | None":
    """The threshold on ``probs[:, 1]`` where sensitivity and specificity (of class 1) are closest.

    Candidates lie midway between neighbouring distinct scores (and beyond both ends), so no image sits on
    the threshold; of several equally close ones the middle is taken.  None unless two classes, both present.
    """
    y = np.asarray(y, np.int64)
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or len(np.unique(y)) != 2:
        return None
    s = np.unique(p[:, 1])
    cands = np.r_[s[0] - 1e-6, (s[1:] + s[:-1]) / 2, s[-1] + 1e-6] if s.size > 1 else np.array([s[0]])
    pred = p[:, 1][None, :] >= cands[:, None]
    sens = (pred & (y == 1)).sum(1) / (y == 1).sum()
    spec = (~pred & (y == 0)).sum(1) / (y == 0).sum()
    gap = np.abs(sens - spec)
    best = np.flatnonzero(gap <= gap.min() + 1e-12)
    return float(np.clip(cands[best[len(best) // 2]], 0.0, 1.0))


def _at(y: np.ndarray, p: np.ndarray, threshold: "float | None") -> dict[str, Any]:
    from ..decision import predicted_classes

    pred = predicted_classes(p, threshold)
    sens = float((pred[y == 1] == 1).mean()) if (y == 1).any() else None
    spec = float((pred[y == 0] == 0).mean()) if (y == 0).any() else None
    bal = (sens + spec) / 2 if sens is not None and spec is not None else None
    return {"threshold": threshold, "sensitivity": sens, "specificity": spec, "balanced_accuracy": bal}


def threshold_effects(y, probs, stored: "float | None") -> "dict[str, Any] | None":
    """Sensitivity, specificity and balanced accuracy of class 1 at the stored threshold (None: the arg-max)
    and at this set's :func:`balancing_threshold`: ``{"stored": {...}, "balancing": {...}}``; None unless
    two classes."""
    y = np.asarray(y, np.int64)
    p = np.asarray(probs, np.float64)
    if p.shape[1] != 2:
        return None
    t = balancing_threshold(y, p)
    return {"stored": _at(y, p, stored), "balancing": _at(y, p, t) if t is not None else None}


def compare_sets(internal: dict[str, Any], external: dict[str, Any], samples_int: dict[str, Any],
                 samples_ext: dict[str, Any], level: float = 0.95) -> dict[str, Any]:
    """Every figure's drop, internal - external: ``{figure name: {"internal", "external", "drop", "drop_ci"}}``.

    The drop's interval is the percentile interval of the differences of the two sets' resampled
    figures (the sets are independent, each resampled by its own units); None without resamples.
    """
    out = {}
    for key, cls in figure_keys(internal["classes"]):
        a, b = figure_value(internal, key, cls), figure_value(external, key, cls)
        sa, sb = figure_value(samples_int, key, cls), figure_value(samples_ext, key, cls)
        ci = percentile_interval(np.asarray(sa) - np.asarray(sb), level) if sa is not None and sb is not None else None
        out[figure_name(key, cls)] = {"internal": a, "external": b,
                                      "drop": None if a is None or b is None else float(a - b), "drop_ci": ci}
    return out


def format_comparison(internal: dict[str, Any], external: dict[str, Any], drops: dict[str, Any],
                      thresholds: "dict[str, Any] | None", names: Sequence[str] = ("internal", "external")) -> str:
    """A plain-text table: each figure on both sets with intervals and the drop (for two classes the
    positive class's sensitivity and specificity; the JSON has every class's), then the thresholds' effect."""
    from .subgroups import format_figure, table_figures

    rows = [["figure", names[0], names[1], "drop"]]
    for key, cls, _ in table_figures(internal["classes"]):
        name, pct = figure_name(key, cls), key != "roc_auc"
        d = drops[name]
        rows.append([name, format_figure(d["internal"], figure_value(internal, key, cls, "_ci"), pct),
                     format_figure(d["external"], figure_value(external, key, cls, "_ci"), pct),
                     format_figure(d["drop"], d["drop_ci"], pct)])
    rows.insert(1, ["images", str(internal["n"]), str(external["n"]), ""])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    line = lambda r: "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
    lines = [line(rows[0]), "  ".join("-" * w for w in widths), *map(line, rows[1:])]
    lines.append("(percent, except ROC AUC; [95 % interval]; drop = " f"{names[0]} - {names[1]})")
    if thresholds:
        lines += ["", _format_thresholds(thresholds, internal["classes"][1])]
    return "\n".join(lines)


def _format_thresholds(thresholds: dict[str, Any], positive: str) -> str:
    from .subgroups import format_figure

    lines = [f"decision threshold on p({positive}): sensitivity / specificity / balanced accuracy (%)"]
    for name, t in thresholds.items():
        for which in ("stored", "balancing"):
            r = t.get(which)
            if r is None:
                continue
            at = "arg-max" if r["threshold"] is None else f"{r['threshold']:.3f}"
            label = "model's threshold" if which == "stored" else "balancing this set"
            lines.append(f"  {name:<9} {label:<18} {at:>8}: " + " / ".join(
                format_figure(r[k]) for k in ("sensitivity", "specificity", "balanced_accuracy")))
    return "\n".join(lines)

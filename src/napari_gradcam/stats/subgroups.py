"""Every figure per subgroup, with intervals and counts, and the subgroups that fall below the whole set.

A subgroup is flagged for a figure when its estimate is below the lower end of the whole set's
interval (Oakden-Rayner et al., "Hidden stratification", CHIL 2020: the figure of one clinically
important subset can be far below the average one).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .bootstrap import Bootstrap, classification_intervals, figure_keys, figure_name, figure_value

__all__ = ["report_with_intervals", "subgroup_reports", "below_whole", "format_subgroups", "format_figure"]


def report_with_intervals(y, probs, classes: Sequence[str], threshold: "float | None", boot: Bootstrap
                          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(:func:`napari_gradcam.metrics.classification_report` with its ``<figure>_ci`` keys, the per-resample
    figures).  With ``boot.resamples == 0`` the report has no interval keys and the samples are empty."""
    from ..metrics import classification_report

    report = classification_report(y, probs, classes, threshold=threshold)
    if not boot.resamples:
        return report, {}
    ci, samples = classification_intervals(y, probs, classes, threshold, boot)
    report.update(ci)
    return report, samples


def below_whole(report: dict[str, Any], whole: dict[str, Any]) -> list[str]:
    """Names of the figures (see :func:`~napari_gradcam.stats.bootstrap.figure_name`) where ``report``'s
    estimate is below the lower end of ``whole``'s interval."""
    out = []
    for key, cls in figure_keys(whole["classes"]):
        v, ci = figure_value(report, key, cls), figure_value(whole, key, cls, "_ci")
        if v is not None and ci is not None and v < ci[0]:
            out.append(figure_name(key, cls))
    return out


def subgroup_reports(y, probs, classes: Sequence[str], subgroup: Sequence["str | None"], threshold: "float | None",
                     boot: Bootstrap, whole: dict[str, Any]) -> list[dict[str, Any]]:
    """One report per subgroup (sorted by name; images whose subgroup is None are left out).

    Parameters
    ----------
    y : (N,) int class indices; probs : (N, K) float probabilities
    subgroup : (N,) the subgroup of each image, or None
    threshold : the model's decision threshold (two classes) or None
    boot : the resampling; its ``groups`` (patients, one per image) are restricted to each subgroup
    whole : the whole set's report with intervals (for the flags)

    Returns
    -------
    list of dict
        Each: ``group`` (name), every key of a classification report with its ``_ci`` keys, ``n``,
        ``units`` (patients or images resampled) and ``below`` (the flagged figures' names).
    """
    y, p = np.asarray(y), np.asarray(probs)
    names = sorted({s for s in subgroup if s is not None}, key=_natural)
    out = []
    for name in names:
        idx = np.array([i for i, s in enumerate(subgroup) if s == name])
        groups = None if boot.groups is None else [boot.groups[i] for i in idx]
        sub_boot = Bootstrap(boot.resamples, boot.seed, boot.level, groups)
        report, _ = report_with_intervals(y[idx], p[idx], classes, threshold, sub_boot)
        report = {"group": name, **report, "units": len(set(groups)) if groups is not None else int(idx.size)}
        report["below"] = below_whole(report, whole)
        out.append(report)
    return out


def _natural(name: str) -> tuple:
    head, _, tail = name.rpartition(" ")
    return (head, int(tail)) if tail.lstrip("-").isdigit() else (name, 0)


def format_figure(v: "float | None", ci: "Sequence[float] | None" = None, pct: bool = True) -> str:
    """``91.2 [85.0, 95.1]`` (percent) or ``0.951 [0.912, 0.978]``; ``n/a`` for None."""
    if v is None:
        return "n/a"
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.3f}")
    return f(v) + (f" [{f(ci[0])}, {f(ci[1])}]" if ci is not None else "")


def table_figures(classes: Sequence[str]) -> list[tuple[str, "str | None", str]]:
    """The figures a printed table shows, as (key, class, heading): all three summaries, and the
    positive class's sensitivity and specificity (two classes) or each class's sensitivity."""
    cols = [("accuracy", None, "accuracy %"), ("balanced_accuracy", None, "balanced %"), ("roc_auc", None, "ROC AUC")]
    if len(classes) == 2:
        pos = classes[1]
        cols += [("sensitivity", pos, f"sens {pos} %"), ("specificity", pos, f"spec {pos} %")]
    else:
        cols += [("sensitivity", c, f"sens {c} %") for c in classes]
    return cols


def format_subgroups(rows: list[dict[str, Any]], whole: dict[str, Any], column: str) -> str:
    """A plain-text table: one line per subgroup (and the whole set first), each figure with its interval;
    ``!`` marks a figure below the whole set's interval."""
    classes = whole["classes"]
    cols = table_figures(classes)
    header = [column, "images", "units"] + [h for _, _, h in cols]
    body = []
    for r in [dict(whole, group="(all)", below=[])] + rows:
        cells = [str(r["group"]), str(r["n"]), str(r.get("units", r.get("bootstrap", {}).get("units", "")))]
        for key, cls, _ in cols:
            text = format_figure(figure_value(r, key, cls), figure_value(r, key, cls, "_ci"), key != "roc_auc")
            cells.append(text + (" !" if figure_name(key, cls) in r["below"] else ""))
        body.append(cells)
    widths = [max(len(header[i]), *(len(b[i]) for b in body)) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))
    flagged = sum(bool(r["below"]) for r in rows)
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, body), "",
                      f"{flagged} of {len(rows)} subgroup(s) have a figure below the whole set's interval (!)."])

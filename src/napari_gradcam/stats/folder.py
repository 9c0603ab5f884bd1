"""A model on a labelled folder, every figure with its interval and per subgroup: the core of
``napari-gradcam evaluate`` and of the napari Evaluate widget."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator, Sequence

import numpy as np

from ..errors import DatasetError
from .bootstrap import DEFAULT_RESAMPLES, Bootstrap
from .grouping import patient_table, resampling_units, table_groups
from .subgroups import report_with_intervals, subgroup_reports

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import ModelBundle
    from ..data import ImageFolderData, Item

__all__ = ["patient_bootstrap", "evaluate_items", "iter_evaluate_folder"]


def patient_bootstrap(items: Sequence["Item"], resamples: int, seed: int = 0,
                      table: "str | Path | None" = None) -> tuple[Bootstrap, str]:
    """The :class:`Bootstrap` of ``items`` by patient (their scan groups; a patients ``table`` wins for the
    files it names), or by image when every image is its own patient; and where the patients came from."""
    units, source = resampling_units([it.path for it in items], [it.group for it in items], table)
    grouped = len(set(units)) < len(units)
    return Bootstrap(resamples, seed, 0.95, units if grouped else None), (
        source if grouped else "none (each image its own unit)")


def evaluate_items(items: Sequence["Item"], y, probs, classes: Sequence[str], threshold: "float | None",
                   boot: Bootstrap, source: str, groups: "str | Path | None" = None,
                   group_column: "str | None" = None) -> tuple[dict[str, Any], dict[str, Any], "dict | None"]:
    """(the report with intervals, its per-resample figures, the subgroups or None).

    ``groups``: a CSV or an audit folder (see :func:`~napari_gradcam.stats.grouping.table_groups`); the
    subgroups are ``{"source", "column", "images_without_group", "groups": [report per subgroup]}``.
    """
    report, samples = report_with_intervals(y, probs, classes, threshold, boot)
    if "bootstrap" in report:
        report["bootstrap"]["patients_from"] = source
    if groups is None:
        return report, samples, None
    if not boot.resamples:
        raise DatasetError("Subgroups are flagged against the whole set's interval; "
                           "use a bootstrap of N > 0 resamples.")
    values, column, table = table_groups(groups, group_column, [it.path for it in items])
    if all(v is None for v in values):
        raise DatasetError(f"No image evaluated is named in {table}; its paths or file names must match the images'.")
    rows = subgroup_reports(y, probs, classes, values, threshold, boot, report)
    return report, samples, {"source": table, "column": column,
                             "images_without_group": sum(v is None for v in values), "groups": rows}


def iter_evaluate_folder(bundle: "ModelBundle", folder: "str | Path", groups: "str | Path | None" = None,
                         group_column: "str | None" = None, bootstrap: int = DEFAULT_RESAMPLES, seed: int = 0,
                         group_pattern: "str | None" = "auto", patients: "str | Path | None" = None,
                         batch_size: int = 32) -> Generator[tuple[int, int], None, dict[str, Any]]:
    """Evaluate ``bundle`` on ``folder`` (class subfolders), yielding ``(done, total)`` after each batch.

    Returns
    -------
    dict
        ``report`` (:func:`~napari_gradcam.metrics.classification_report` with its ``_ci`` keys, at the
        model's decision threshold), ``subgroups`` (None without ``groups``), ``skipped`` ([(path, reason)]).
    """
    from ..decision import decision_threshold

    Bootstrap(bootstrap, seed)  # checked before the work
    data = _scan(bundle, folder, group_pattern)
    probs, y, failed = [], [], []
    total = len(data)
    yield 0, total
    for start in range(0, total, batch_size):
        p, lab, bad = _predict(bundle, data.subset(range(start, min(start + batch_size, total))), batch_size)
        probs.append(p)
        y.append(lab)
        failed += bad
        yield min(start + batch_size, total), total
    y, probs = np.concatenate(y), np.concatenate(probs)
    if len(y) == 0:
        raise DatasetError(f"None of the images in {folder} could be read.")
    lost = {p for p, _ in failed}
    used = [it for it in data.items if it.path not in lost]
    boot, source = patient_bootstrap(used, bootstrap, seed, patients or patient_table(folder))
    report, _, subgroups = evaluate_items(used, y, probs, bundle.classes, decision_threshold(bundle), boot, source,
                                          groups, group_column)
    return {"report": report, "subgroups": subgroups, "skipped": list(data.skipped) + failed}


def _scan(bundle: "ModelBundle", folder, group_pattern) -> "ImageFolderData":
    from ..data import scan_folder

    data = scan_folder(folder, group_pattern=group_pattern, classes=bundle.classes)
    if not data.items:
        names = bundle.classes if len(bundle.classes) <= 10 else f"({len(bundle.classes)} classes)"
        raise DatasetError(f"No readable images of the model's classes {names} were found in {folder}.")
    return data


def _predict(bundle: "ModelBundle", data: "ImageFolderData", batch_size: int):
    from ..train.evaluate import evaluate_model

    return evaluate_model(bundle, data, batch_size=batch_size)

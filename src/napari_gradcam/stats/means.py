"""Intervals of per-image means (localisation: pointing game, IoU, energy inside, ...), paired across methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bootstrap import Bootstrap, percentile_interval, weighted_mean_samples

__all__ = ["image_units", "mean_intervals", "bootstrap_settings"]


def image_units(names: Sequence[str], group_pattern: "str | None" = "auto") -> list[str]:
    """The patient of each image name, found as the trainer finds it (:func:`napari_gradcam.data.group_of`
    with ``group_pattern``; ``"auto"``: Kermany names; None or ``"none"``: every image on its own)."""
    from ..data import _resolve_pattern, group_of

    rx = _resolve_pattern(group_pattern)
    return [group_of(Path(n), rx) if rx is not None else str(n) for n in names]


def bootstrap_settings(names: Sequence[str], resamples: int, seed: int = 0, level: float = 0.95,
                       group_pattern: "str | None" = "auto") -> dict[str, Any]:
    """The ``settings["bootstrap"]`` of a localisation report over images ``names`` (checked; with the
    resampling unit and the count of units)."""
    names = list(dict.fromkeys(str(n) for n in names))
    units = image_units(names, group_pattern)
    same = len(set(units)) == len(names)
    boot = Bootstrap(resamples, seed, level, None if same else units)
    return {**boot.settings(len(names)), "group_pattern": group_pattern}


def mean_intervals(rows: Sequence[tuple[str, str, dict[str, Any]]], boot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{method: {metric: [low, high] or None}} of the mean of each metric over images.

    Parameters
    ----------
    rows : (image name, method, {metric: value or None}) per scored (image, method)
    boot : ``{"resamples", "seed", "level", "group_pattern"}``; images are grouped into patients by
        :func:`image_units`, and every method is resampled with the same draws (paired).
    """
    names = list(dict.fromkeys(r[0] for r in rows))
    col = {n: i for i, n in enumerate(names)}
    units = image_units(names, boot.get("group_pattern", "auto"))
    w = Bootstrap(int(boot["resamples"]), int(boot.get("seed", 0)), float(boot.get("level", 0.95)),
                  units).weights(len(names))
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r[1] for r in rows):
        mine = [r for r in rows if r[1] == method]
        keys = list(dict.fromkeys(k for r in mine for k in r[2]))
        out[method] = {}
        for k in keys:
            values: list[Any] = [None] * len(names)
            for name, _, metrics in mine:
                v = metrics.get(k)
                values[col[name]] = None if isinstance(v, (str, list, dict)) else v
            out[method][k] = percentile_interval(weighted_mean_samples(w, values), float(boot.get("level", 0.95)))
    return out

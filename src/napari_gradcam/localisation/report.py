"""Localisation results: one row per (image, method), means per method, JSON and tables."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import GradCamError


# ----------------------------------------------------------------------------- report
@dataclass
class LocalisationRow:
    """The metrics of one method on one image.

    name : image name (relative path for files); method : "cam" | "gradcam" | "gradcam++";
    target : explained class name; target_source : "label" or "predicted";
    metrics : {metric: value} with :data:`METRIC_KEYS` (and :data:`CURVE_KEYS` when curves were
    computed), plus ``score`` (the model's probability of the target).
    """

    name: str
    method: str
    target: str
    target_source: str
    metrics: dict[str, Any]


def _clean(v: Any) -> Any:
    """numpy scalars -> Python; NaN -> None (valid JSON)."""
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _mean(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


@dataclass
class LocalisationReport:
    """Localisation metrics per image and averaged per method.

    Attributes
    ----------
    rows : list of LocalisationRow, one per (image, method).
    methods : the methods evaluated (undefined ones are left out and explained in ``notes``).
    n_images : images given; n_empty : images skipped because their mask is empty (e.g. normal).
    notes : one sentence per thing worth knowing (skipped methods, resized masks, ...).
    settings : tolerance, level, target mode, steps, baseline, model, ...
    """

    rows: list[LocalisationRow] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    n_images: int = 0
    n_empty: int = 0
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_evaluated(self) -> int:
        """Images with a non-empty mask that were scored."""
        return len({r.name for r in self.rows})

    def summary(self) -> dict[str, dict[str, Any]]:
        """{method: {metric: mean over images, "n": images}}; pointing means are hit rates in [0, 1].

        With ``settings["bootstrap"]`` (``{"resamples": B, "seed": s, "level": 0.95, "group_pattern": ...}``,
        as :func:`~napari_gradcam.localisation.evaluate_localisation` sets it) each metric also has
        ``<metric>_ci``: its percentile bootstrap interval ``[low, high]`` (or None), every method
        resampled with the same draws of patients (see :func:`napari_gradcam.stats.mean_intervals`).
        """
        out: dict[str, dict[str, Any]] = {}
        for m in self.methods:
            rows = [r for r in self.rows if r.method == m]
            keys: list[str] = []
            for r in rows:
                keys += [k for k in r.metrics if k not in keys]
            stats: dict[str, Any] = {"n": len(rows)}
            for k in keys:
                stats[k] = _mean(r.metrics.get(k) for r in rows)
            out[m] = stats
        boot = self.settings.get("bootstrap") or {}
        if boot.get("resamples") and self.rows:
            from ..stats import mean_intervals

            cis = mean_intervals([(r.name, r.method, r.metrics) for r in self.rows], boot)
            for m, ci in cis.items():
                out[m].update({f"{k}_ci": v for k, v in ci.items()})
        return out

    @property
    def means(self) -> dict[str, dict[str, Any]]:
        """Same as :meth:`summary`."""
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: settings, counts, summary, per-image rows, notes (NaN -> None)."""
        return _clean({
            "settings": dict(self.settings),
            "methods": list(self.methods),
            "n_images": self.n_images,
            "n_empty": self.n_empty,
            "n_evaluated": self.n_evaluated,
            "summary": self.summary(),
            "images": [asdict(r) for r in self.rows],
            "notes": list(self.notes),
        })

    def to_json(self, path: "str | Path") -> Path:
        """Write :meth:`to_dict` as JSON (indented); returns the path."""
        path = Path(path)
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        from ..outputs import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LocalisationReport":
        rows = [LocalisationRow(**r) for r in data.get("images", [])]
        return cls(rows, list(data.get("methods", [])), int(data.get("n_images", 0)),
                   int(data.get("n_empty", 0)), list(data.get("notes", [])), dict(data.get("settings", {})))

    @classmethod
    def from_json(cls, path: "str | Path") -> "LocalisationReport":
        """Read a report written by :meth:`to_json`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise GradCamError(f"The localisation report {path} could not be read ({e}).") from None
        return cls.from_dict(data)

    def table(self, markdown: bool = False) -> str:
        """A readable table, one row per method (means over the scored images).

        Columns: images, pointing-game hit rate (%) (and with tolerance when one was set), energy
        inside the mask, the mask's share, their ratio, IoU/Dice at Otsu's threshold and at the
        fixed level, and deletion/insertion AUC when computed.  ``markdown=True`` gives a GitHub
        markdown table.
        """
        from ..engine.methods import method_title

        summary = self.summary()
        tol = self.settings.get("tolerance", 0) or 0
        level = self.settings.get("level", 0.5)
        cols: list[tuple[str, str, str]] = [("n", "images", "d")]
        cols.append(("pointing", "pointing %", "pct"))
        at = self.settings.get("tolerance_at")
        if tol:
            cols.append(("pointing_tol", f"pointing@{tol:g}px{f'/{at:g}' if at else ''} %", "pct"))
        cols += [("energy", "energy", "f3"), ("mask_share", "lesion share", "f3"),
                 ("energy_ratio", "energy ratio", "f2"),
                 ("iou_otsu", "IoU otsu", "f3"), ("dice_otsu", "Dice otsu", "f3"),
                 ("iou_fixed", f"IoU {level:g}", "f3"), ("dice_fixed", f"Dice {level:g}", "f3")]
        if any("deletion_auc" in s for s in summary.values()):
            cols += [("deletion_auc", "deletion AUC", "f3"), ("insertion_auc", "insertion AUC", "f3")]

        def num(v: Any, kind: str) -> str:
            if kind == "d":
                return str(int(v))
            if kind == "pct":
                return f"{100 * v:.1f}"
            return f"{v:.{kind[1]}f}"

        def fmt(s: dict[str, Any], k: str, kind: str) -> str:
            v, ci = s.get(k), s.get(f"{k}_ci")
            if v is None:
                return "-"
            return num(v, kind) + (f" [{num(ci[0], kind)}, {num(ci[1], kind)}]" if ci is not None else "")

        header = ["method"] + [c[1] for c in cols]
        body = [[method_title(m)] + [fmt(summary[m], k, kind) for k, _, kind in cols]
                for m in self.methods]
        if markdown:
            lines = ["| " + " | ".join(header) + " |",
                     "|" + "|".join(["---"] + ["---:"] * len(cols)) + "|"]
            lines += ["| " + " | ".join(r) + " |" for r in body]
        else:
            widths = [max(len(header[i]), *(len(r[i]) for r in body)) if body else len(header[i])
                      for i in range(len(header))]
            def line(cells: list[str]) -> str:
                return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))
            lines = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in body]
        extra = [f"{self.n_evaluated} of {self.n_images} images scored; {self.n_empty} with an empty mask skipped."]
        boot = self.settings.get("bootstrap") or {}
        if boot.get("resamples"):
            extra.append(f"[{100 * boot.get('level', 0.95):g} % bootstrap interval: {boot['resamples']} resamples "
                         f"of {boot.get('units', 'the')} {boot.get('unit', 'image')}s, seed {boot.get('seed', 0)}]")
        extra += self.notes
        if not markdown:
            return "\n".join(lines + [""] + extra)
        return "\n".join(lines + [""] + [f"{e}  " for e in extra])

    def __str__(self) -> str:
        return self.table()

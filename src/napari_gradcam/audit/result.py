"""The :class:`Audit` result: the per-image table, the findings, the maps' store; saved as one folder
(``images.csv``, ``findings.json``, ``maps.zarr``, ``report.html``) written atomically."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DatasetError, shown

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

FILES = ("images.csv", "findings.json", "maps.zarr", "report.html")


@dataclass
class Audit:
    """A data set's audit.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per image, the columns of ``images.csv`` (path, label, predicted, p_<CLASS>, cluster,
        atypical, frame_share, outside_mask_share, cell_<r>_<c>, status).
    findings : dict
        ``findings.json``: model, method, layer, classes, source, class_stats, clusters (with their tests
        and verdicts, likely shortcuts first), skipped.
    store : Path
        The zarr store of the maps: ``grid`` (N, G, G) float32 sum-normalised predicted-class maps,
        ``layer_maps`` (N, 2, h, w) at the layer's grid (predicted, label), ``probs``, ``frame``,
        ``cells``, ``outside``, ``state``; ``class_means`` (K, G, G), ``cluster_means`` (n_clusters, G, G),
        ``embedding`` (N, 2) (NaN for images not clustered).
    """

    table: "pd.DataFrame"
    findings: dict
    store: Path
    images: Any = field(default=None, repr=False)  # in-memory source, for thumbnails of array inputs

    @property
    def classes(self) -> list[str]:
        return list(self.findings["classes"])

    @property
    def clusters(self) -> list[dict]:
        return list(self.findings["clusters"])

    @property
    def shortcuts(self) -> list[dict]:
        """The clusters whose verdict is "likely shortcut"."""
        return [c for c in self.clusters if c["verdict"] == "likely shortcut"]

    def maps(self, name: str = "grid") -> np.ndarray:
        """One array of the store, read whole (``grid``, ``class_means``, ``cluster_means``, ``embedding``, ...)."""
        import zarr

        return zarr.open_group(str(self.store), mode="r")[name][:]

    def read_image(self, i: int) -> np.ndarray:
        """Image ``i`` of the table (from its file, or the in-memory input)."""
        from ..data import read_image

        path = self.table["path"].iloc[i]
        if path.startswith("array:") and self.images is not None:
            return np.asarray(self.images[int(path.split(":", 1)[1])])
        return read_image(path)

    def save(self, folder) -> Path:
        """Write the audit's folder atomically (a failure leaves a previous folder whole)."""
        from ..outputs import atomic_folder
        from .report import write_report

        def write(tmp: str) -> None:
            t = Path(tmp)
            self.table.to_csv(t / "images.csv", index=False)
            (t / "findings.json").write_text(json.dumps(self.findings, indent=1), encoding="utf-8")
            shutil.copytree(self.store, t / "maps.zarr")
            write_report(self, t / "report.html")

        path = atomic_folder(folder, write)
        self.store = Path(path) / "maps.zarr"
        return Path(path)

    @classmethod
    def load(cls, folder) -> "Audit":
        """Read an audit folder back (its maps stay on disk)."""
        import pandas as pd

        folder = Path(folder)
        missing = [f for f in FILES[:3] if not (folder / f).exists()]
        if missing:
            raise DatasetError(f"{shown(folder)} is not an audit folder (no {', '.join(missing)}).")
        table = pd.read_csv(folder / "images.csv", keep_default_na=False,
                            na_values={c: [""] for c in ("atypical", "frame_share", "outside_mask_share")})
        for col in table.columns:
            if col.startswith(("p_", "cell_")) or col in ("atypical", "frame_share", "outside_mask_share"):
                table[col] = pd.to_numeric(table[col], errors="coerce").astype(np.float32)
        findings = json.loads((folder / "findings.json").read_text(encoding="utf-8"))
        return cls(table, findings, folder / "maps.zarr")

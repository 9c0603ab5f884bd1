"""Reading an audit folder's findings (``findings.json`` + ``images.csv``) for unlearning.

The folder is the output of ``napari-gradcam audit`` (see the audit's format contract): a finding is
referenced as ``DIR:ID`` (one cluster) or ``DIR`` (every cluster whose verdict is "likely shortcut").
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError, GradCamError, ParameterError

SHORTCUT = "likely shortcut"


@dataclass
class Finding:
    """One cluster of an audit: what unlearning needs from it.

    Attributes
    ----------
    id : int
        The cluster's id in the audit.
    class_name : str
        The class whose images form the cluster.
    box : tuple of float
        (y0, x0, y1, x1), fractions of the image in [0, 1]: where the cluster's evidence lies.
    members : list of str
        The member images' paths (as in ``images.csv``).
    others : list of str
        The other usable images of the same class (the contrast of the concept vector).
    rest : list of str
        The usable images of the other classes (insertion recipients).
    raw : dict
        The cluster's entry of ``findings.json`` as written.
    """

    id: int
    class_name: str
    box: tuple[float, float, float, float]
    members: list[str]
    others: list[str]
    rest: list[str]
    raw: dict[str, Any]


@dataclass
class AuditFindings:
    """An audit folder's findings: its layer, classes and chosen clusters."""

    folder: Path
    layer: str
    classes: list[str]
    findings: list[Finding]

    def record(self, method: str, **extra: Any) -> dict[str, Any]:
        """What was unlearned, JSON-ready: stored in the bundle that unlearned it."""
        return {"method": method, "audit": str(self.folder), "layer": self.layer,
                "clusters": [f.id for f in self.findings], "classes": [f.class_name for f in self.findings],
                "boxes": [list(f.box) for f in self.findings], **extra}


def parse_target(target: "str | os.PathLike", cluster: "int | None" = None) -> tuple[Path, int | None]:
    """``DIR`` or ``DIR:ID`` -> (folder, cluster id or None).  An explicit ``cluster`` wins over ``:ID``."""
    text = os.fspath(target)
    m = re.fullmatch(r"(.+):(\d+)", text)
    if m and not Path(text).exists():
        folder, cid = Path(m.group(1)), int(m.group(2))
    else:
        folder, cid = Path(text), None
    if cluster is not None:
        from ..validate import check_int

        cid = check_int(cluster, "cluster", 0)
    return folder, cid


def read_audit(target: "str | os.PathLike", cluster: "int | None" = None) -> AuditFindings:
    """The findings to unlearn from an audit folder (``DIR``, ``DIR:ID`` or ``DIR`` with ``cluster``).

    Raises GradCamError (one sentence): no folder, no or damaged ``findings.json``/``images.csv``,
    an unknown cluster id, no cluster called a likely shortcut when none was named.
    """
    folder, cid = parse_target(target, cluster)
    if not (folder / "findings.json").is_file():
        raise DatasetError(f"{folder} is not an audit folder (it has no findings.json); run napari-gradcam audit "
                           "first.")
    try:
        doc = json.loads((folder / "findings.json").read_text(encoding="utf-8"))
        clusters, layer, classes = list(doc["clusters"]), str(doc["layer"]), [str(c) for c in doc["classes"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{folder / 'findings.json'} is damaged ({type(e).__name__}: {e}).") from None
    if cid is not None:
        chosen = [c for c in clusters if isinstance(c, dict) and c.get("id") == cid]
        if not chosen:
            ids = ", ".join(str(c.get("id")) for c in clusters if isinstance(c, dict)) or "none"
            raise ParameterError(f"The audit in {folder} has no cluster {cid}; its clusters are {ids}.")
    else:
        chosen = [c for c in clusters if isinstance(c, dict) and c.get("verdict") == SHORTCUT]
        if not chosen:
            raise GradCamError(f"The audit in {folder} calls no cluster a likely shortcut; name one as "
                               f"{folder}:ID to unlearn it anyway.")
    rows = read_images_csv(folder)
    return AuditFindings(folder, layer, classes, [_finding(folder, c, rows) for c in chosen])


def read_images_csv(folder: Path) -> list[dict[str, str]]:
    """The rows of ``images.csv`` whose status is "ok"."""
    path = folder / "images.csv"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DatasetError(f"The audit folder {folder} has no readable images.csv ({e.strerror or e}).") from None
    if rows and not {"path", "cluster"} <= set(rows[0]):
        raise DatasetError(f"{path} lacks the path and cluster columns of an audit's table.")
    return [r for r in rows if (r.get("status") or "ok") == "ok"]


def _class_of(row: dict[str, str]) -> str:
    """The row's class: its label where known, else the predicted class."""
    return row.get("label") or row.get("predicted") or ""


def _finding(folder: Path, c: dict[str, Any], rows: list[dict[str, str]]) -> Finding:
    try:
        cid, cls = int(c["id"]), str(c["class"])
        box = tuple(float(v) for v in c["box"])
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"A cluster in {folder / 'findings.json'} is damaged ({type(e).__name__}: {e}).") \
            from None
    if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise DatasetError(f"Cluster {cid} of {folder} has an impossible box {list(box)} (fractions y0 < y1, "
                           "x0 < x1 in [0, 1] expected).")
    members = [str(p) for p in c.get("members") or []]
    if not members:
        members = [r["path"] for r in rows if _cluster_id(r) == cid]
    if not members:
        raise DatasetError(f"Cluster {cid} of {folder} has no members.")
    in_cluster = set(members)
    others = [r["path"] for r in rows if _class_of(r) == cls and r["path"] not in in_cluster]
    rest = [r["path"] for r in rows if _class_of(r) not in ("", cls) and r["path"] not in in_cluster]
    return Finding(cid, cls, box, members, others, rest, dict(c))


def _cluster_id(row: dict[str, str]) -> int:
    try:
        return int(float(row.get("cluster") or -1))
    except ValueError:
        return -1


def read_images(paths: list[str], limit: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """The images at ``paths`` (at most ``limit``, a seeded random choice), as read.

    In-memory entries (``array:<i>``) and files that cannot be read are left out; raises
    DatasetError when none is left.
    """
    from ..data import read_image
    from ..errors import ImageError
    from ..preprocess import check_image

    if limit is not None and len(paths) > limit:
        pick = np.sort(np.random.default_rng(seed).choice(len(paths), size=limit, replace=False))
        paths = [paths[i] for i in pick]
    out = []
    for p in paths:
        if p.startswith("array:"):
            continue
        try:
            out.append(check_image(read_image(p)))
        except (ImageError, DatasetError, OSError):
            continue
    if not out:
        raise DatasetError(f"None of the {len(paths)} image(s) could be read (e.g. {paths[0] if paths else '-'}); "
                           "the audit's images must still be on disk.")
    return out


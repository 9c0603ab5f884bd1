"""From the pass's store to the audit's table and findings: per predicted class its strategies
(:mod:`.spray`), each cluster's mean map, box and counterfactual tests (:mod:`.confirm`), per class the
statistics of the evidence shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .confirm import default_control_box, insertion_test, removal_test, verdict
from .shares import evidence_box
from .spray import find_strategies

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..bundle import ModelBundle
    from .sources import AuditSource


@dataclass(frozen=True)
class ConfirmSettings:
    """How clusters are tested: at most ``max_images`` members and recipients per test, ``fill`` for removal,
    ``content`` for insertion, Fisher's exact test at ``alpha`` with a difference of rates of at least
    ``min_effect``; clusters smaller than ``min_size`` and boxes over ``max_box`` of the image are not tested."""

    max_images: int = 64
    fill: str = "harmonic"
    content: str = "median"
    alpha: float = 0.01
    min_effect: float = 0.2
    min_size: int = 3
    max_box: float = 0.3


def build_table(source: "AuditSource", classes: list[str], store, settings) -> "pd.DataFrame":
    """images.csv's columns for every image (cluster -1 and atypical NaN until :func:`add_clusters`)."""
    import pandas as pd

    g = store.group
    state, probs = g["state"][:], g["probs"][:]
    reasons = store.reasons()
    ok = state == 1
    pred = np.where(ok, np.nan_to_num(probs, nan=-1).argmax(axis=1), -1)
    cols = {"path": [e.key for e in source.entries],
            "label": [classes[e.label] if e.label is not None else "" for e in source.entries],
            "predicted": [classes[p] if p >= 0 else "" for p in pred]}
    for k, c in enumerate(classes):
        cols[f"p_{c}"] = probs[:, k]
    cols["cluster"] = np.full(len(state), -1, np.int64)
    cols["atypical"] = np.full(len(state), np.nan, np.float32)
    cols["frame_share"] = g["frame"][:]
    cols["outside_mask_share"] = g["outside"][:]
    cells = g["cells"][:]
    for r in range(cells.shape[1]):
        for c in range(cells.shape[2]):
            cols[f"cell_{r}_{c}"] = cells[:, r, c]
    cols["status"] = ["ok" if s == 1 else reasons.get(i, "not explained") for i, s in enumerate(state)]
    return pd.DataFrame(cols)


def class_stats(table: "pd.DataFrame", classes: list[str]) -> dict:
    """Per predicted class: its images and the distribution of the frame and outside-mask shares."""
    out = {}
    for c in classes:
        rows = table[(table["status"] == "ok") & (table["predicted"] == c)]
        stats = {"n": int(len(rows))}
        for col in ("frame_share", "outside_mask_share"):
            v = rows[col].dropna().to_numpy()
            stats[col] = ({"mean": float(v.mean()), "q10": float(np.quantile(v, 0.1)),
                           "median": float(np.median(v)), "q90": float(np.quantile(v, 0.9))} if len(v) else None)
        cell_cols = [k for k in table.columns if k.startswith("cell_")]
        stats["cells"] = {k: float(rows[k].mean()) for k in cell_cols} if len(rows) else {}
        out[c] = stats
    return out


def cluster_classes(table: "pd.DataFrame", classes: list[str], grid: np.ndarray, max_clusters: int,
                    seed: int = 0) -> Iterator[tuple[int, list[dict], np.ndarray, np.ndarray]]:
    """Cluster each predicted class's maps; fills ``cluster`` and ``atypical`` of ``table`` in place.

    Yields (class index, its cluster dicts without tests, the class mean map (G, G), its (n, 2) embedding
    rows' positions in the table and coordinates as an (n, 3) array [row, x, y])."""
    next_id = 0
    for k, c in enumerate(classes):
        rows = np.nonzero(((table["status"] == "ok") & (table["predicted"] == c)).to_numpy())[0]
        if len(rows) == 0:
            yield k, [], np.zeros(grid.shape[1:], np.float32), np.zeros((0, 3), np.float32)
            continue
        maps = grid[rows]
        s = find_strategies(maps, max_clusters=max_clusters, seed=seed)
        main = maps[s.labels == 0].mean(axis=0)
        clusters = []
        for j in range(s.n_clusters):
            members = rows[s.labels == j]
            mean = maps[s.labels == j].mean(axis=0)
            clusters.append({"id": next_id + j, "class": c, "class_index": k, "size": int(len(members)),
                             "members": table["path"].iloc[members].tolist(), "box": evidence_box(mean),
                             "distance_from_main": float(np.abs(mean - main).sum() / 2),
                             "mean_atypical": float(s.atypical[s.labels == j].mean()),
                             "_rows": members, "_mean": mean})
        table.loc[table.index[rows], "cluster"] = s.labels + next_id
        table.loc[table.index[rows], "atypical"] = s.atypical
        next_id += s.n_clusters
        yield k, clusters, maps.mean(axis=0), np.column_stack([rows, s.embedding]).astype(np.float32)


def _spread(rows: np.ndarray, m: int) -> np.ndarray:
    """At most ``m`` of ``rows``, evenly spread (deterministic)."""
    if len(rows) <= m:
        return rows
    return rows[np.linspace(0, len(rows) - 1, m).round().astype(int)]


def confirm_cluster(bundle: "ModelBundle", source: "AuditSource", table: "pd.DataFrame", cluster: dict,
                    settings: ConfirmSettings) -> None:
    """Run the removal and insertion tests of one cluster and set its ``removal``, ``insertion``,
    ``verdict`` and ``reason``."""
    box = cluster["box"]
    area = (box[2] - box[0]) * (box[3] - box[1])
    ctrl = default_control_box(box)
    cluster.update(removal=None, insertion=None)
    if cluster["size"] < settings.min_size:
        cluster.update(verdict="not tested", reason=f"a cluster of {cluster['size']} image(s) is too small to test")
        return
    if area > settings.max_box or ctrl is None:
        cluster.update(verdict="not tested", reason=f"its evidence spreads over {100 * area:.0f} % of the image, "
                                                    "no local region to test against a control of the same size")
        return
    members = [source.read(int(i)) for i in _spread(cluster["_rows"], settings.max_images)]
    cluster["removal"] = removal_test(bundle, members, box, cluster["class_index"], control_box=ctrl,
                                      fill=settings.fill)
    ok = (table["status"] == "ok").to_numpy()
    others = ok & (table["predicted"] != cluster["class"]).to_numpy() & (table["label"] != cluster["class"]).to_numpy()
    rec_rows = _spread(np.nonzero(others)[0], settings.max_images)
    if len(rec_rows):
        recipients = [source.read(int(i)) for i in rec_rows]
        cluster["insertion"] = insertion_test(bundle, members, recipients, box, cluster["class_index"],
                                              control_box=ctrl, content=settings.content)
    cluster["verdict"], cluster["reason"] = verdict(cluster["removal"], cluster["insertion"], settings.alpha,
                                                    settings.min_effect)

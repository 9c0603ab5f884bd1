"""Prove a finding is gone: re-run an old audit's counterfactual tests on a new model.

For each finding, the removal test (fill the box in the members) and the insertion test (paste the
members' box into images of the other classes) run again on the new model.  A finding is *gone* when
insertion moves no more predictions to its class than the control box does, within the 95 % interval
of the difference of the two proportions (Newcombe's hybrid score interval, method 10 of Newcombe,
Statistics in Medicine 1998): the interval's lower end is at most 0.
"""

from __future__ import annotations

import importlib
import math
import os
from typing import Any

from ..errors import GradCamError
from .findings import read_audit, read_images

#: Images per side of a test (members; recipients), a seeded random choice.
MAX_IMAGES = 200
Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``k / n``; (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> dict[str, float]:
    """Newcombe's hybrid score interval of ``k1/n1 - k2/n2``: {"estimate", "low", "high"}."""
    p1, p2 = (k1 / n1 if n1 else 0.0), (k2 / n2 if n2 else 0.0)
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return {"estimate": d, "low": low, "high": high}


def default_tester():
    """The audit's counterfactual tests (``napari_gradcam.audit.confirm``)."""
    try:
        return importlib.import_module("napari_gradcam.audit.confirm")
    except ImportError:
        raise GradCamError("Re-checking findings needs the audit's counterfactual tests "
                           "(napari_gradcam.audit.confirm), which this installation lacks.") from None


def recheck(new_bundle, old_audit_dir: "str | os.PathLike", cluster: int | None = None, *, tester=None,
            max_images: int = MAX_IMAGES) -> dict[str, Any]:
    """Re-run each old finding's removal and insertion tests on ``new_bundle``; say whether it is gone.

    Parameters
    ----------
    new_bundle : ModelBundle
        The model after unlearning (or any model with the audit's classes).
    old_audit_dir : str or path
        The audit that found them: ``DIR`` (its likely shortcuts), ``DIR:ID`` or ``DIR`` with ``cluster``.
    tester : object, optional
        Has ``removal_test(bundle, images, box, class_index)`` and ``insertion_test(bundle, donors,
        recipients, box, class_index)`` returning the audit's result dicts (``{"changed"|"moved", "n",
        "rate", ..., "control": {...}}``); default :mod:`napari_gradcam.audit.confirm`.

    Returns
    -------
    dict
        ``{"audit", "findings": [{"id", "class", "box", "before": {"removal", "insertion"}, "after":
        {"removal", "insertion"}, "insertion_vs_control": {"estimate", "low", "high"}, "gone", "reason"}],
        "all_gone"}``.
    """
    tester = tester if tester is not None else default_tester()
    audit = read_audit(old_audit_dir, cluster)
    out = []
    for f in audit.findings:
        k = new_bundle.class_index(f.class_name)
        members = read_images(f.members, max_images)
        removal = tester.removal_test(new_bundle, members, list(f.box), k, **_as_before(f.raw.get("removal")))
        insertion = None
        if f.rest:
            insertion = tester.insertion_test(new_bundle, members, read_images(f.rest, max_images, seed=1),
                                              list(f.box), k, **_as_before(f.raw.get("insertion")))
        out.append(_verdict(f, removal, insertion))
    return {"audit": str(audit.folder), "findings": out, "all_gone": all(r["gone"] for r in out)}


def _as_before(result: dict | None) -> dict[str, Any]:
    """The options an old test ran with (its control box, the insertion's content), so the new model is
    tested as the old one was."""
    if not result:
        return {}
    kw = {"control_box": result["control"]["box"]} if (result.get("control") or {}).get("box") else {}
    if result.get("content"):
        kw["content"] = result["content"]
    return kw


def _verdict(f, removal: dict, insertion: dict | None) -> dict[str, Any]:
    row = {"id": f.id, "class": f.class_name, "box": list(f.box),
           "before": {"removal": f.raw.get("removal"), "insertion": f.raw.get("insertion")},
           "after": {"removal": removal, "insertion": insertion}}
    if insertion is None:
        return {**row, "insertion_vs_control": None, "gone": False,
                "reason": "no images of other classes to insert the artifact into; not re-checked"}
    c = insertion["control"]
    diff = difference_interval(int(insertion["moved"]), int(insertion["n"]), int(c["moved"]), int(c["n"]))
    gone = diff["low"] <= 0.0
    reason = (f"insertion moves {insertion['moved']}/{insertion['n']} predictions, its control "
              f"{c['moved']}/{c['n']}: difference {diff['estimate']:+.3f} (95 % interval {diff['low']:+.3f} to "
              f"{diff['high']:+.3f}) " + ("includes 0: gone" if gone else "is above 0: still used"))
    return {**row, "insertion_vs_control": diff, "gone": bool(gone), "reason": reason}

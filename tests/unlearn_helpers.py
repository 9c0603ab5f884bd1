"""Planted-shortcut data, hand-made audit folders and a small counterfactual tester for the unlearning tests.

The data: 48 px films of two classes, "clear" and "lesion" (a faint blob); a side-letter marker (the
artifact: a bright "L" on a dark label) in the top-left corner of a share of the lesion films only, so
that it is a shortcut.  The audit folder follows the audit's output contract (``images.csv`` + ``findings.json``), written by hand for a
cluster whose members and box we know.  The tester pastes / fills boxes and counts moved predictions, as
``napari_gradcam.audit.confirm``'s tests do (which the lead wires in at merge).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

CLASSES = ("clear", "lesion")
SIZE = 48
#: The marker's pixels (rows, columns) and the audit's box around it (fractions, a little larger).
MARK = (slice(4, 12), slice(4, 12))
BOX = [2 / SIZE, 2 / SIZE, 14 / SIZE, 14 / SIZE]
CONTROL_BOX = [1 - 14 / SIZE, 1 - 14 / SIZE, 1 - 2 / SIZE, 1 - 2 / SIZE]  # same size, opposite corner


def film(lesion: bool, marker: bool, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One (size, size) uint8 film."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.45 + 0.05 * rng.standard_normal() + ndimage.gaussian_filter(rng.standard_normal((size, size)), 2) * 0.5
    if lesion:
        cy, cx = rng.uniform(0.35, 0.75, size=2)
        img = img + 0.35 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.08**2))
    if marker:  # a burned-in side letter: a bright "L" on a dark label
        r, c = MARK[0].start, MARK[1].start
        img[MARK] = 0.05
        img[r + 1: r + 7, c + 1: c + 3] = 0.95
        img[r + 5: r + 7, c + 1: c + 6] = 0.95
    img[0, -1], img[-1, 0] = 0.0, 1.0  # every film spans 0..255: the per-image scaling to [0, 1] is the same for
    # all, so the marker changes only its own pixels (else it would change a whole film's contrast, a second,
    # global artifact that no paste at the network's input reproduces)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_data(root: Path, n_train: int = 160, n_test: int = 100, share: float = 0.7, seed: int = 0) -> dict:
    """``root/train/{clear,lesion}`` (the marker on ``share`` of the lesion films) and a clean
    ``root/test/{clear,lesion}``; returns {"train", "test", "planted", "clear_train", "lesion_clean"} paths."""
    rng = np.random.default_rng(seed)
    out = {"planted": [], "lesion_clean": [], "clear_train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in CLASSES:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                lesion = cls == "lesion"
                marker = split == "train" and lesion and i < round(share * n)
                p = d / f"{cls}{i:04d}.png"
                Image.fromarray(film(lesion, marker, rng)).save(p)
                key = "test" if split == "test" else "planted" if marker else "lesion_clean" if lesion \
                    else "clear_train"
                out[key].append(str(p))
    out["train"], out["test_dir"] = root / "train", root / "test"
    return out


def write_audit(folder: Path, data: dict, layer: str, cluster_id: int = 3, verdict: str = "likely shortcut",
                box=BOX, extra_clusters: list | None = None) -> Path:
    """An audit folder by the contract: the planted lesion films form cluster ``cluster_id``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(p, "lesion", cluster_id) for p in data["planted"]] + [(p, "lesion", 0) for p in data["lesion_clean"]]
    rows += [(p, "clear", 1) for p in data["clear_train"]]
    with open(folder / "images.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "predicted", "p_clear", "p_lesion", "cluster", "atypical", "frame_share",
                    "outside_mask_share", "status"])
        for p, label, c in rows:
            w.writerow([p, label, label, 0.5, 0.5, c, 0.0, 0.1, "", "ok"])
    n = len(data["planted"])
    clusters = [{"id": cluster_id, "class": "lesion", "class_index": 1, "size": n, "members": data["planted"],
                 "box": list(box),
                 "removal": {"changed": n // 2, "n": n, "rate": 0.5, "drop": 0.3,
                             "control": {"changed": 0, "n": n, "rate": 0.0, "drop": 0.0}},
                 "insertion": {"moved": 40, "n": 100, "rate": 0.4, "control": {"moved": 1, "n": 100, "rate": 0.01}},
                 "verdict": verdict, "reason": "planted for the tests"}] + list(extra_clusters or [])
    doc = {"version": 1, "model": "m.safetensors", "method": "gradcam", "layer": layer, "classes": list(CLASSES),
           "source": str(data["train"]), "class_stats": {}, "clusters": clusters, "skipped": []}
    (folder / "findings.json").write_text(json.dumps(doc))
    return folder


def read(paths) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in paths]


def _pixels(box, shape) -> tuple[slice, slice]:
    h, w = shape[:2]
    return slice(int(round(box[0] * h)), int(round(box[2] * h))), slice(int(round(box[1] * w)), int(round(box[3] * w)))


def _predicted(bundle, images) -> np.ndarray:
    import napari_gradcam as ng

    return np.asarray(ng.predict(bundle, list(images))).argmax(axis=1)


class PasteTester:
    """Removal and insertion tests with the audit's result keys (a stand-in for ``audit.confirm``)."""

    def __init__(self, control_box=CONTROL_BOX):
        self.control_box = control_box

    def insertion_test(self, bundle, donors, recipients, box, class_index, *, control_box=None, content=None) -> dict:
        """Paste donor i's box into recipient i at the same place (cycling donors); count predictions moved to
        ``class_index``; the control pastes the donors' content of a box of the same size elsewhere."""
        def run(b):
            before = _predicted(bundle, recipients)
            pasted = []
            for i, r in enumerate(recipients):
                r2, d = r.copy(), donors[i % len(donors)]
                ys, xs = _pixels(b, r.shape)
                dys, dxs = _pixels(b, d.shape)  # the donor's content at the same place (control: elsewhere)
                r2[ys, xs] = d[dys, dxs][: r2[ys, xs].shape[0], : r2[ys, xs].shape[1]]
                pasted.append(r2)
            after = _predicted(bundle, pasted)
            moved = int(((before != class_index) & (after == class_index)).sum())
            return {"moved": moved, "n": len(recipients), "rate": moved / len(recipients)}

        out = run(box)
        return {**out, "control": run(control_box or self.control_box)}

    def removal_test(self, bundle, images, box, class_index, *, control_box=None, fill="median") -> dict:
        """Fill the box with the image's median; count changed predictions and the class's mean drop."""
        import napari_gradcam as ng

        def run(b):
            p0 = np.asarray(ng.predict(bundle, list(images)))
            filled = []
            for im in images:
                im2 = im.copy()
                ys, xs = _pixels(b, im.shape)
                im2[ys, xs] = np.median(im)
                filled.append(im2)
            p1 = np.asarray(ng.predict(bundle, filled))
            changed = int((p0.argmax(1) != p1.argmax(1)).sum())
            return {"changed": changed, "n": len(images), "rate": changed / len(images),
                    "drop": float((p0[:, class_index] - p1[:, class_index]).mean())}

        return {**run(box), "control": run(control_box or self.control_box)}


def accuracy(bundle, test_dir: Path) -> float:
    """Accuracy on the clean films of ``test_dir`` (class subfolders)."""
    right = total = 0
    for k, cls in enumerate(CLASSES):
        paths = sorted((test_dir / cls).glob("*.png"))
        pred = _predicted(bundle, read(paths))
        right += int((pred == k).sum())
        total += len(paths)
    return right / total

"""Confirm, do not guess: counterfactual tests of a region's role, each beside a control region of the
same size and shape elsewhere in the same images.

- :func:`removal_test`: fill the region (harmonic inpainting; biharmonic from scikit-image or a median on
  request) and count predictions
  that change, with the mean drop of the class probability.
- :func:`insertion_test` (GEBI, Kazimierczak et al.): paste the region's content from images of the class
  into images of other classes at the same place and count predictions that move to the class.
- :func:`verdict`: "likely shortcut" when a test moves predictions well beyond its control: Fisher's exact
  test (one-sided) on the counts at ``alpha`` and a difference of rates of at least ``min_effect``.

Boxes are ``[y0, x0, y1, x1]`` fractions of each image; images (H, W) or (H, W, C) arrays of any dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import GradCamError

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import ModelBundle

FILLS = ("harmonic", "biharmonic", "median")


def check_box(box) -> list[float]:
    """A box as four floats with 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1 (one sentence otherwise)."""
    try:
        y0, x0, y1, x1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise GradCamError(f"A box is [y0, x0, y1, x1] in fractions of the image, not {box!r}.") from None
    if not (0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1):
        raise GradCamError(f"A box needs 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1, not {[y0, x0, y1, x1]}.")
    return [y0, x0, y1, x1]


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Area of the intersection of two boxes over the area of ``a``."""
    h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return h * w / max((a[2] - a[0]) * (a[3] - a[1]), 1e-12)


def default_control_box(box: Sequence[float]) -> list[float] | None:
    """The same box mirrored left-right, top-bottom or through the centre: the one overlapping the box
    least, None where every mirror overlaps it by more than a quarter (a box too central or too large)."""
    y0, x0, y1, x1 = check_box(box)
    options = [[y0, 1 - x1, y1, 1 - x0], [1 - y1, x0, 1 - y0, x1], [1 - y1, 1 - x1, 1 - y0, 1 - x0]]
    best = min(options, key=lambda c: _overlap(box, c))
    return best if _overlap(box, best) <= 0.25 else None


def pixel_box(box: Sequence[float], shape: tuple[int, ...]) -> tuple[slice, slice]:
    """(rows, cols) slices of a fraction box on an image of ``shape`` (at least one pixel each)."""
    h, w = shape[:2]
    r0, c0 = int(np.floor(box[0] * h)), int(np.floor(box[1] * w))
    r1, c1 = max(r0 + 1, int(np.ceil(box[2] * h))), max(c0 + 1, int(np.ceil(box[3] * w)))
    return slice(r0, min(r1, h)), slice(c0, min(c1, w))


def fill_box(image: np.ndarray, box: Sequence[float], fill: str = "harmonic") -> np.ndarray:
    """A copy of ``image`` with ``box`` filled from its surroundings: "harmonic" (Laplace's equation with
    the surrounding pixels as boundary values: smooth and bounded by them), "biharmonic" (scikit-image's
    ``inpaint_biharmonic`` on a window around the box, mirrored outward at the image's edges) or "median" (the median of a ring around it)."""
    if fill not in FILLS:
        raise GradCamError(f"fill must be one of {', '.join(FILLS)}, not {fill!r}.")
    out = np.array(image, copy=True)
    rows, cols = pixel_box(box, image.shape)
    pad = max(2, (rows.stop - rows.start) // 2, (cols.stop - cols.start) // 2)
    wr = slice(max(0, rows.start - pad), min(image.shape[0], rows.stop + pad))
    wc = slice(max(0, cols.start - pad), min(image.shape[1], cols.stop + pad))
    window = out[wr, wc].astype(np.float64)
    hole = np.zeros(window.shape[:2], bool)
    hole[rows.start - wr.start:rows.stop - wr.start, cols.start - wc.start:cols.stop - wc.start] = True
    if hole.all():  # nothing around the box to fill from: its mean level
        filled = np.broadcast_to(window.mean(axis=(0, 1)), window.shape)
    elif fill == "median":
        filled = window.copy()
        filled[hole] = np.median(window[~hole], axis=0)
    elif fill == "harmonic":
        filled = _harmonic(window, hole)
    else:
        filled = window.copy()
        filled[hole] = _biharmonic(window, hole, image.shape[:2], (wr, wc))[hole]
    if np.issubdtype(out.dtype, np.integer):
        info = np.iinfo(out.dtype)
        filled = np.clip(np.round(filled), info.min, info.max)
    out[wr, wc] = filled.astype(out.dtype)
    return out


def _harmonic(window: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``window`` with ``hole`` filled by the solution of Laplace's equation whose boundary values are the
    known pixels around it (the window's own edge is free): smooth, and never brighter or darker than its
    surroundings (the maximum principle), however noisy they are.  One sparse solve for every channel."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    h, w = hole.shape
    idx = -np.ones((h, w), np.int64)
    rows, cols = np.nonzero(hole)
    idx[rows, cols] = np.arange(len(rows))
    flat = window.reshape(h, w, -1)
    a_r, a_c, a_v = [], [], []
    rhs = np.zeros((len(rows), flat.shape[2]))
    degree = np.zeros(len(rows))
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        nr, nc = rows + dr, cols + dc
        inside = (nr >= 0) & (nr < h) & (nc >= 0) & (nc < w)
        degree += inside
        k = np.nonzero(inside)[0]
        other = idx[nr[k], nc[k]]
        unknown = other >= 0
        a_r += [k[unknown]]
        a_c += [other[unknown]]
        a_v += [-np.ones(int(unknown.sum()))]
        rhs[k[~unknown]] += flat[nr[k[~unknown]], nc[k[~unknown]]]
    n = len(rows)
    a = coo_matrix((np.concatenate(a_v + [degree]), (np.concatenate(a_r + [np.arange(n)]),
                                                     np.concatenate(a_c + [np.arange(n)]))), shape=(n, n)).tocsc()
    sol = spsolve(a, rhs).reshape(n, -1)
    out = flat.copy()
    out[rows, cols] = sol
    return out.reshape(window.shape)


def _biharmonic(window: np.ndarray, hole: np.ndarray, shape: tuple[int, int], where: tuple[slice, slice]):
    """scikit-image's biharmonic inpainting of ``hole`` in ``window``; where the window meets the image's
    edge it is first mirrored outward (``numpy.pad(mode="symmetric")``) so that the hole is surrounded by
    known pixels: the fill is interpolated, not extrapolated across a free edge (which overshoots)."""
    from skimage.restoration import inpaint_biharmonic

    rows, cols = np.nonzero(hole)
    span = (int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1))
    pads = [(span[a] + 2 if where[a].start == 0 else 0, span[a] + 2 if where[a].stop == shape[a] else 0)
            for a in (0, 1)]
    extra = [(0, 0)] * (window.ndim - 2)
    big = np.pad(window, pads + extra, mode="symmetric")
    big_hole = np.pad(hole, pads, mode="symmetric")
    out = inpaint_biharmonic(big, big_hole, channel_axis=-1 if window.ndim == 3 else None)
    return out[pads[0][0]:pads[0][0] + window.shape[0], pads[1][0]:pads[1][0] + window.shape[1]]


def _probabilities(bundle: "ModelBundle", images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
    from ..inference import predict

    return predict(bundle, list(images), batch_size=batch_size)


def _removal_counts(bundle, images, box, class_index: int, fill: str, before: np.ndarray) -> dict:
    after = _probabilities(bundle, [fill_box(im, box, fill) for im in images])
    changed = int((after.argmax(1) != before.argmax(1)).sum())
    n = len(images)
    drop = float(np.mean(before[:, class_index] - after[:, class_index])) if n else 0.0
    return {"changed": changed, "n": n, "rate": changed / n if n else 0.0, "drop": drop, "box": list(box)}


def removal_test(bundle: "ModelBundle", images: Sequence[np.ndarray], box, class_index: int, *,
                 control_box=None, fill: str = "harmonic") -> dict:
    """Fill ``box`` in each image and count the predictions that change.

    Returns
    -------
    dict with ``changed`` (images whose predicted class changed), ``n``, ``rate`` (changed / n), ``drop``
    (mean fall of the class-``class_index`` probability), ``box``, and ``control`` (the same keys for
    ``control_box``, default :func:`default_control_box` of ``box``; None where no control fits).
    """
    box = check_box(box)
    ctrl = check_box(control_box) if control_box is not None else default_control_box(box)
    before = _probabilities(bundle, images)
    result = _removal_counts(bundle, images, box, class_index, fill, before)
    result["control"] = _removal_counts(bundle, images, ctrl, class_index, fill, before) if ctrl else None
    return result


def _as_unit(image: np.ndarray) -> np.ndarray:
    """Integer images on their type's full scale (x / max: a saturated marker stays saturated), float
    images on their own value range; float64."""
    from ..preprocess import to_unit

    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float64) / np.iinfo(image.dtype).max
    return to_unit(image).astype(np.float64)


def _patch_for(patch_unit: np.ndarray, recipient: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """A unit-range patch resized to the recipient's box, in the recipient's channels, range and dtype
    (between images of one integer type: the same pixel values)."""
    from skimage.transform import resize

    from ..preprocess import value_range

    size = (rows.stop - rows.start, cols.stop - cols.start)
    p = resize(patch_unit, size + patch_unit.shape[2:], order=1, preserve_range=True, anti_aliasing=True)
    if recipient.ndim == 2 and p.ndim == 3:
        p = p[..., :3] @ np.array([0.299, 0.587, 0.114])
    elif recipient.ndim == 3 and p.ndim == 2:
        p = np.repeat(p[..., None], recipient.shape[2], axis=2)
    elif recipient.ndim == 3 and p.shape[2] != recipient.shape[2]:
        p = p[..., : recipient.shape[2]] if p.shape[2] > recipient.shape[2] else \
            np.concatenate([p, np.ones(p.shape[:2] + (1,))], axis=2)
    if np.issubdtype(recipient.dtype, np.integer):  # the type's full scale (inverse of _as_unit)
        p = p * np.iinfo(recipient.dtype).max
    else:
        lo, hi = value_range(recipient)
        p = lo + p * (hi - lo if hi > lo else 1.0)  # a constant float image: a unit scale above its level
    if np.issubdtype(recipient.dtype, np.integer):
        info = np.iinfo(recipient.dtype)
        p = np.clip(np.round(p), info.min, info.max)
    return p.astype(recipient.dtype)


def insert_patches(donors: Sequence[np.ndarray], recipients: Sequence[np.ndarray], box,
                   content: str = "each") -> list[np.ndarray]:
    """Copies of ``recipients`` with the ``box`` content of donors pasted at the same place:
    ``content="each"`` donor ``i % n_donors`` into recipient ``i`` (GEBI), ``"median"`` the pixel-wise
    median of every donor's box content (what the donors share: a fixed marker stays, varying content fades)."""
    units = []
    for d in donors:
        rows, cols = pixel_box(box, d.shape)
        units.append(_as_unit(d)[rows, cols])
    if content == "median":
        from skimage.transform import resize

        size = units[0].shape[:2]
        gray = [u if u.ndim == 2 else u[..., :3] @ np.array([0.299, 0.587, 0.114]) for u in units]
        units = [np.median(np.stack([resize(u, size, order=1, preserve_range=True) for u in gray]), axis=0)]
    elif content != "each":
        raise GradCamError(f"content must be 'each' or 'median', not {content!r}.")
    out = []
    for i, r in enumerate(recipients):
        rows, cols = pixel_box(box, r.shape)
        new = np.array(r, copy=True)
        new[rows, cols] = _patch_for(units[i % len(units)], r, rows, cols)
        out.append(new)
    return out


def _insertion_counts(bundle, donors, recipients, box, class_index: int, before: np.ndarray, content: str) -> dict:
    after = _probabilities(bundle, insert_patches(donors, recipients, box, content))
    was = before.argmax(1) == class_index
    moved = int(((after.argmax(1) == class_index) & ~was).sum())
    n = int((~was).sum())
    gain = float(np.mean(after[:, class_index] - before[:, class_index])) if len(recipients) else 0.0
    return {"moved": moved, "n": n, "rate": moved / n if n else 0.0, "gain": gain, "box": list(box)}


def insertion_test(bundle: "ModelBundle", donors: Sequence[np.ndarray], recipients: Sequence[np.ndarray], box,
                   class_index: int, *, control_box=None, content: str = "each") -> dict:
    """Paste the donors' ``box`` content into recipients at the same place and count the recipients whose
    prediction moves to class ``class_index`` (recipients already predicted as that class are not counted).

    Returns
    -------
    dict with ``moved``, ``n`` (recipients not predicted as the class before), ``rate``, ``gain`` (mean rise
    of the class probability), ``box``, ``content``, and ``control`` (the same for the control box, the
    donors' content there pasted there; None where no control fits).
    """
    box = check_box(box)
    if not donors or not recipients:
        raise GradCamError("An insertion test needs at least one donor and one recipient image.")
    ctrl = check_box(control_box) if control_box is not None else default_control_box(box)
    before = _probabilities(bundle, recipients)
    result = _insertion_counts(bundle, donors, recipients, box, class_index, before, content)
    result["content"] = content
    result["control"] = (_insertion_counts(bundle, donors, recipients, ctrl, class_index, before, content)
                         if ctrl else None)
    return result


def beyond_control(count: int, n: int, control_count: int, control_n: int, alpha: float = 0.01,
                   min_effect: float = 0.2) -> tuple[bool, float]:
    """(whether ``count / n`` exceeds ``control_count / control_n`` by Fisher's exact test, one-sided, at
    ``alpha`` and by at least ``min_effect``; the p value)."""
    from scipy.stats import fisher_exact

    if n == 0 or control_n == 0:
        return False, 1.0
    p = float(fisher_exact([[count, n - count], [control_count, control_n - control_count]],
                           alternative="greater")[1])
    return bool(p < alpha and count / n - control_count / control_n >= min_effect), p


def verdict(removal: dict | None, insertion: dict | None, alpha: float = 0.01,
            min_effect: float = 0.2) -> tuple[str, str]:
    """("likely shortcut" | "no evidence" | "not tested", the reason with the counts)."""
    parts, fired = [], []
    for name, result, key, what in (("removal", removal, "changed", "predictions changed"),
                                    ("insertion", insertion, "moved", "predictions moved to the class")):
        if not result or not result.get("control") or result["n"] == 0:
            continue
        c = result["control"]
        hit, p = beyond_control(result[key], result["n"], c[key], c["n"], alpha, min_effect)
        parts.append(f"{name}: {result[key]}/{result['n']} {what} ({100 * result['rate']:.0f} %) vs "
                     f"{c[key]}/{c['n']} ({100 * c['rate']:.0f} %) with the control box, Fisher's exact test "
                     f"one-sided p = {p:.2g}")
        if hit:
            fired.append(name)
    if not parts:
        return "not tested", "no test could be run (no control box fits, or no images to test on)"
    if fired == ["removal"] and insertion and insertion.get("control"):
        return "likely shortcut", ("removal beyond the control: the model relies on this region, but inserting "
                                   "it into other classes' images did not move them, so it may hold real signal; "
                                   + "; ".join(parts))
    if fired:
        return "likely shortcut", f"{' and '.join(fired)} beyond the control; " + "; ".join(parts)
    return "no evidence", "; ".join(parts)

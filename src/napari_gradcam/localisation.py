"""Localisation metrics: does a heatmap point at the lesion?

Given a heatmap (H, W) and a lesion mask (H, W) of the same image:

* **Pointing game** (Zhang et al., "Top-down neural attention by excitation backprop", 2016/2018):
  a hit when the heatmap's maximum lies inside the mask.  ``tolerance`` (pixels) accepts a
  maximum within that Euclidean distance of the mask, which is the mask dilated by a disk of that
  radius (Zhang et al. use 15 px at 224 px).  Tied maxima: the first in row-major order
  (``numpy.argmax``).  An all-zero (or all-negative) heatmap points nowhere: a miss.
* **Energy inside** (the "energy-based pointing game" of Score-CAM, Wang et al. 2020): the share of
  the heatmap's mass (negative values clipped to 0) inside the mask.  A heatmap that ignores the
  lesion scores about the mask's share of the image (:func:`mask_share`); ``energy_ratio`` =
  energy / share, so 1 is chance and higher is better.
* **IoU and Dice** of the heatmap thresholded at Otsu's level (``skimage.filters.threshold_otsu``,
  foreground = heatmap > threshold) and at a fixed fraction of its maximum
  (foreground = heatmap >= level * max; heatmaps from :func:`napari_gradcam.engine` have max 1).
* **Deletion and insertion** (Petsiuk et al., "RISE", 2018): the target's probability as the most
  relevant pixels (by heatmap rank) are removed (replaced by a baseline: the blurred image, its
  mean, or zero) or inserted (into the baseline image), over fractions 0..1, and the area under
  each curve (``sklearn.metrics.auc``).  A good map has a low deletion AUC and a high insertion AUC.

Everything takes numpy arrays and returns plain dicts and dataclasses.  :func:`evaluate_localisation`
runs all of it for several methods over many images (:func:`iter_evaluate_localisation` is the same
as a generator of ``(done, total)`` progress, for napari workers), and :func:`localize_folder` is the
whole job from a model file and two folders, as the CLI's ``localize`` command.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterable, Sequence

import numpy as np

from .errors import DatasetError, GradCamError, ImageError, LayerError

if TYPE_CHECKING:  # pragma: no cover
    from .bundle import ModelBundle

__all__ = [
    "pointing_game",
    "energy_inside",
    "mask_share",
    "threshold_scores",
    "localisation_scores",
    "deletion_insertion",
    "LocalisationRow",
    "LocalisationReport",
    "iter_evaluate_localisation",
    "evaluate_localisation",
    "PairedFiles",
    "load_masks_folder",
    "read_mask",
    "localize_folder",
    "METRIC_KEYS",
]

#: Metrics of one heatmap against one mask, in report order (``pointing_tol`` uses the tolerance).
METRIC_KEYS = (
    "pointing", "pointing_tol", "energy", "mask_share", "energy_ratio",
    "iou_otsu", "dice_otsu", "iou_fixed", "dice_fixed",
)
#: Model-based metrics, present when curves are computed.
CURVE_KEYS = ("deletion_auc", "insertion_auc")
#: File-name endings that mark a mask of the image with the rest of the name ("a_mask.png" -> "a").
MASK_SUFFIXES = ("_mask", "-mask", ".mask", "_masks", "_label", "_labels", "_seg", "_lesion", "_gt")


# ----------------------------------------------------------------------------- checks
def _check_pair(heatmap, mask) -> tuple[np.ndarray, np.ndarray]:
    """Heatmap -> (H, W) float64 (NaN refused), mask -> (H, W) bool; same shape."""
    h = np.asarray(heatmap)
    m = np.asarray(mask)
    if h.ndim != 2:
        raise ImageError(f"A heatmap must be a 2D (H, W) array, not shape {h.shape}.")
    if m.ndim != 2:
        raise ImageError(f"A mask must be a 2D (H, W) array, not shape {m.shape}.")
    if h.shape != m.shape:
        raise ImageError(f"The heatmap {h.shape} and the mask {m.shape} have different shapes; "
                         "they must cover the same image.")
    if h.size == 0:
        raise ImageError("The heatmap is empty.")
    if not (np.issubdtype(h.dtype, np.number) or h.dtype == bool) or np.iscomplexobj(h):
        raise ImageError(f"A heatmap must hold real numbers, not {h.dtype}.")
    h = h.astype(np.float64, copy=False)
    if not np.isfinite(h).all():
        raise ImageError("The heatmap has NaN or infinite values.")
    return h, (m != 0) if m.dtype != bool else m


def _nan_if(cond: bool, value: float) -> float:
    return float("nan") if cond else float(value)


# ----------------------------------------------------------------------------- heatmap vs mask
def pointing_game(heatmap, mask, tolerance: float = 0) -> bool:
    """Whether the heatmap's maximum falls on the mask (the pointing game).

    Parameters
    ----------
    heatmap : (H, W) array of float
        Any real values; larger means more relevant.
    mask : (H, W) array of bool (or int: nonzero is the lesion)
    tolerance : float, optional
        Pixels.  A maximum within this Euclidean distance of a mask pixel is a hit, i.e. the mask
        is dilated by a disk of this radius (Zhang et al. use 15 px at 224 px).  0: the maximum's
        own pixel must be in the mask.

    Returns
    -------
    bool
        True for a hit.  The maximum is ``numpy.argmax`` (the first of tied maxima in row-major
        order).  A heatmap whose maximum is <= 0 (e.g. all zero) points nowhere: False.  An empty
        mask: False.

    Raises
    ------
    ImageError
        Shapes differ, are not 2D, or the heatmap has NaN/inf.

    Examples
    --------
    >>> m = np.zeros((10, 10), bool); m[2:4, 2:4] = True
    >>> h = np.zeros((10, 10)); h[3, 3] = 1
    >>> pointing_game(h, m)
    True
    >>> h = np.zeros((10, 10)); h[3, 6] = 1
    >>> pointing_game(h, m), pointing_game(h, m, tolerance=3)
    (False, True)
    """
    h, m = _check_pair(heatmap, mask)
    if tolerance < 0:
        raise GradCamError(f"The pointing-game tolerance must be >= 0 pixels, not {tolerance}.")
    flat = int(np.argmax(h))
    if not h.flat[flat] > 0 or not m.any():
        return False
    r, c = divmod(flat, h.shape[1])
    if m[r, c]:
        return True
    if tolerance <= 0:
        return False
    t = int(math.floor(tolerance))
    r0, r1, c0, c1 = max(r - t, 0), min(r + t + 1, h.shape[0]), max(c - t, 0), min(c + t + 1, h.shape[1])
    rr, cc = np.nonzero(m[r0:r1, c0:c1])
    if rr.size == 0:
        return False
    d2 = (rr + r0 - r) ** 2 + (cc + c0 - c) ** 2
    return bool(d2.min() <= tolerance * tolerance)


def mask_share(mask) -> float:
    """The mask's share of the image: (number of mask pixels) / (H * W), in [0, 1].

    Parameters
    ----------
    mask : (H, W) array of bool (or int: nonzero is the lesion)
    """
    m = np.asarray(mask)
    if m.size == 0:
        raise ImageError("The mask is empty (no pixels).")
    return float(np.count_nonzero(m) / m.size)


def energy_inside(heatmap, mask) -> float:
    """Share of the heatmap's mass inside the mask.

    Parameters
    ----------
    heatmap : (H, W) array of float
        Negative values are clipped to 0 (only positive evidence counts).
    mask : (H, W) array of bool (or int: nonzero is the lesion)

    Returns
    -------
    float
        ``sum(heatmap[mask]) / sum(heatmap)`` in [0, 1]; 0 for an all-zero heatmap.

    Examples
    --------
    >>> m = np.zeros((10, 10), bool); m[:5, :5] = True
    >>> h = np.zeros((10, 10)); h[:5, :] = 1        # half the map's rows, half of them on the mask
    >>> energy_inside(h, m)
    0.5
    """
    h, m = _check_pair(heatmap, mask)
    h = np.clip(h, 0, None)
    total = h.sum()
    if not total > 0:
        return 0.0
    return float(h[m].sum() / total)


def threshold_scores(heatmap, mask, level: "float | str" = 0.5) -> dict[str, float]:
    """IoU and Dice of the thresholded heatmap against the mask.

    Parameters
    ----------
    heatmap : (H, W) array of float
    mask : (H, W) array of bool (or int: nonzero is the lesion)
    level : float in [0, 1] or "otsu"
        A float keeps the pixels ``>= level * heatmap.max()`` (for the [0, 1] heatmaps of
        :func:`napari_gradcam.engine` that is ``>= level``).  ``"otsu"`` keeps the pixels
        ``> skimage.filters.threshold_otsu(heatmap)``.  An all-zero (or constant <= 0) heatmap keeps
        no pixel.

    Returns
    -------
    dict
        ``iou`` = |A & B| / |A | B| and ``dice`` = 2 |A & B| / (|A| + |B|), floats in [0, 1], and
        ``threshold`` (the absolute value used) and ``area`` (share of the image kept).  Both NaN
        when the mask and the thresholded map are both empty (undefined).

    Examples
    --------
    >>> m = np.zeros((10, 10), bool); m[:5, :5] = True          # 25 px
    >>> h = np.zeros((10, 10)); h[:5, :] = 1                    # 50 px, 25 of them on the mask
    >>> threshold_scores(h, m, 0.5)["iou"], threshold_scores(h, m, "otsu")["dice"]
    (0.5, 0.6666666666666666)
    """
    h, m = _check_pair(heatmap, mask)
    hmax = float(h.max())
    if isinstance(level, str):
        if level.strip().lower() != "otsu":
            raise GradCamError(f"Unknown threshold {level!r}; use 'otsu' or a number between 0 and 1.")
        if hmax <= 0 or hmax == float(h.min()):
            t, keep = hmax, np.zeros(h.shape, bool)
        else:
            from skimage.filters import threshold_otsu

            t = float(threshold_otsu(h))
            keep = h > t
    else:
        level = float(level)
        if not 0 <= level <= 1:
            raise GradCamError(f"The threshold level must be between 0 and 1 (a fraction of the maximum), not {level}.")
        t = level * hmax
        keep = h >= t if hmax > 0 else np.zeros(h.shape, bool)
    inter = np.count_nonzero(keep & m)
    n_keep, n_mask = np.count_nonzero(keep), np.count_nonzero(m)
    union = n_keep + n_mask - inter
    return {
        "iou": _nan_if(union == 0, inter / union if union else 0),
        "dice": _nan_if(union == 0, 2 * inter / (n_keep + n_mask) if union else 0),
        "threshold": float(t),
        "area": float(n_keep / h.size),
    }


def localisation_scores(heatmap, mask, tolerance: float = 0, level: float = 0.5) -> dict[str, Any]:
    """All heatmap-versus-mask metrics (no model needed).

    Parameters
    ----------
    heatmap : (H, W) array of float
    mask : (H, W) array of bool (or int: nonzero is the lesion)
    tolerance : float
        Pointing-game tolerance in pixels for ``pointing_tol``.
    level : float
        Fixed threshold, a fraction of the heatmap's maximum, for ``iou_fixed`` / ``dice_fixed``.

    Returns
    -------
    dict
        ``pointing`` (bool, no tolerance), ``pointing_tol`` (bool, with ``tolerance``), ``energy``,
        ``mask_share``, ``energy_ratio`` (energy / mask_share; NaN for an empty mask),
        ``iou_otsu``, ``dice_otsu``, ``iou_fixed``, ``dice_fixed`` (floats).
    """
    h, m = _check_pair(heatmap, mask)
    share = mask_share(m)
    energy = energy_inside(h, m)
    otsu = threshold_scores(h, m, "otsu")
    fixed = threshold_scores(h, m, level)
    hit = pointing_game(h, m, 0)
    return {
        "pointing": hit,
        "pointing_tol": hit if tolerance <= 0 else pointing_game(h, m, tolerance),
        "energy": energy,
        "mask_share": share,
        "energy_ratio": _nan_if(share == 0, energy / share if share else 0),
        "iou_otsu": otsu["iou"],
        "dice_otsu": otsu["dice"],
        "iou_fixed": fixed["iou"],
        "dice_fixed": fixed["dice"],
    }


# ----------------------------------------------------------------------------- deletion / insertion
BASELINES = ("blur", "mean", "zero")


def _baseline_image(img: np.ndarray, baseline: str, blur_sigma: float | None) -> np.ndarray:
    """float32 image of the same shape as ``img`` (float32) that carries 'no information'."""
    if baseline == "zero":
        return np.zeros_like(img)
    if baseline == "mean":
        axes = (0, 1)
        return np.broadcast_to(img.mean(axis=axes, keepdims=True), img.shape).astype(np.float32)
    from skimage.filters import gaussian

    sigma = blur_sigma if blur_sigma is not None else max(1.0, 0.05 * max(img.shape[:2]))
    return gaussian(img, sigma=sigma, channel_axis=-1 if img.ndim == 3 else None,
                    preserve_range=True, mode="reflect").astype(np.float32)


def _target_probabilities(bundle: "ModelBundle", images: list[np.ndarray], index: int,
                          vrange: tuple[float, float], batch_size: int) -> np.ndarray:
    """Probability of class ``index`` for each image, all scaled with the same value range."""
    import torch

    from .preprocess import bundle_tensor

    out = []
    bundle.model.eval()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = bundle_tensor(bundle, images[i: i + batch_size], vrange=vrange).to(bundle.device)
            out.append(torch.softmax(bundle.model(x).float(), dim=1)[:, index].cpu())
    return torch.cat(out).numpy().astype(np.float64)


def deletion_insertion(
    bundle: "ModelBundle",
    image,
    heatmap,
    target_index: "int | str",
    steps: int = 20,
    baseline: str = "blur",
    batch_size: int = 16,
    blur_sigma: float | None = None,
) -> dict[str, Any]:
    """Deletion and insertion curves of a heatmap and their areas (Petsiuk et al. 2018).

    Pixels are ranked by heatmap value (highest first; ties in row-major order).  At each fraction
    ``f`` in ``linspace(0, 1, steps + 1)`` the top ``round(f * H * W)`` pixels are

    * deleted: replaced by the baseline image (the curve starts at the full image's probability
      and ends at the baseline's), or
    * inserted: copied from the image into the baseline image (starts at the baseline's, ends at
      the full image's),

    and the model's probability of ``target_index`` is recorded.  All ``2 * (steps + 1)`` images are
    classified in batches.  Every perturbed image is scaled to [0, 1] with the *original* image's
    value range (the preprocessing of :func:`napari_gradcam.predict` otherwise uses each image's own
    minimum and maximum, and deleting the brightest pixels would rescale the rest).

    Parameters
    ----------
    bundle : ModelBundle
    image : (H, W) or (H, W, 3|4) array, any dtype
    heatmap : (H, W) array of float, e.g. ``explain(...).data``
    target_index : int or str
        The class whose probability is tracked.
    steps : int
        Number of steps (>= 1); the curves have ``steps + 1`` points.
    baseline : "blur" | "mean" | "zero"
        What deleted pixels become and what insertion starts from: a Gaussian blur of the image
        (sigma ``blur_sigma``, default 5% of its larger side), its mean intensity, or its minimum
        ("zero": black).
    batch_size : int
        Images per forward pass.
    blur_sigma : float, optional
        Gaussian sigma in pixels for ``baseline="blur"``.

    Returns
    -------
    dict
        ``fractions`` (steps + 1,) float64 in [0, 1]; ``deletion`` and ``insertion``
        (steps + 1,) float64 probabilities; ``deletion_auc`` and ``insertion_auc`` (floats in
        [0, 1], ``sklearn.metrics.auc`` over the fractions); ``baseline``; ``target_index``.
    """
    from sklearn.metrics import auc

    from .preprocess import check_image, to_unit

    img = check_image(image)
    hm = np.asarray(heatmap)
    if hm.shape != img.shape[:2]:
        raise ImageError(f"The heatmap {hm.shape} does not match the image {img.shape[:2]}.")
    _check_pair(hm, np.zeros(hm.shape, bool))
    steps = int(steps)
    if steps < 1:
        raise GradCamError(f"Deletion/insertion needs at least 1 step, not {steps}.")
    if baseline not in BASELINES:
        raise GradCamError(f"Unknown baseline {baseline!r}; choose {', '.join(BASELINES)}.")
    index = bundle.class_index(target_index)
    # work in the unit range of the original image (alpha dropped, NaN/inf handled as for predict)
    src = to_unit(img)
    vrange = (0.0, 1.0)
    base = _baseline_image(src, baseline, blur_sigma)

    h, w = hm.shape
    n = h * w
    order = np.argsort(-hm.ravel(), kind="stable")
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.rint(fractions * n).astype(np.int64)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)  # 0 = most relevant pixel
    rank = rank.reshape(h, w)
    deleted, inserted = [], []
    for k in counts:
        top = rank < k
        if src.ndim == 3:
            top = top[..., None]
        deleted.append(np.where(top, base, src))
        inserted.append(np.where(top, src, base))
    probs = _target_probabilities(bundle, deleted + inserted, index, vrange, max(1, int(batch_size)))
    dele, ins = probs[: steps + 1], probs[steps + 1:]
    return {
        "fractions": fractions,
        "deletion": dele,
        "insertion": ins,
        "deletion_auc": float(auc(fractions, dele)),
        "insertion_auc": float(auc(fractions, ins)),
        "baseline": baseline,
        "target_index": index,
    }


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
        """{method: {metric: mean over images, "n": images}}; pointing means are hit rates in [0, 1]."""
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
        from .outputs import atomic_write_text

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
        from .engine.methods import method_title

        summary = self.summary()
        tol = self.settings.get("tolerance", 0) or 0
        level = self.settings.get("level", 0.5)
        cols: list[tuple[str, str, str]] = [("n", "images", "d")]
        cols.append(("pointing", "pointing %", "pct"))
        if tol:
            cols.append(("pointing_tol", f"pointing@{tol:g}px %", "pct"))
        cols += [("energy", "energy", "f3"), ("mask_share", "lesion share", "f3"),
                 ("energy_ratio", "energy ratio", "f2"),
                 ("iou_otsu", "IoU otsu", "f3"), ("dice_otsu", "Dice otsu", "f3"),
                 ("iou_fixed", f"IoU {level:g}", "f3"), ("dice_fixed", f"Dice {level:g}", "f3")]
        if any("deletion_auc" in s for s in summary.values()):
            cols += [("deletion_auc", "deletion AUC", "f3"), ("insertion_auc", "insertion AUC", "f3")]

        def fmt(v: Any, kind: str) -> str:
            if v is None:
                return "-"
            if kind == "d":
                return str(int(v))
            if kind == "pct":
                return f"{100 * v:.1f}"
            return f"{v:.{kind[1]}f}"

        header = ["method"] + [c[1] for c in cols]
        body = [[method_title(m)] + [fmt(summary[m].get(k), kind) for k, _, kind in cols]
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
        extra += self.notes
        if not markdown:
            return "\n".join(lines + [""] + extra)
        return "\n".join(lines + [""] + [f"{e}  " for e in extra])

    def __str__(self) -> str:
        return self.table()


# ----------------------------------------------------------------------------- evaluation
def read_mask(path: "str | Path") -> np.ndarray:
    """A label image as a (H, W) bool lesion mask: nonzero (in any channel) is the lesion."""
    from .data import read_image

    arr = read_image(path)
    if arr.ndim == 3:
        arr = arr[..., :3].any(axis=-1) if arr.shape[-1] in (3, 4) else arr.any(axis=-1)
    return np.asarray(arr) != 0


def _fit_mask(mask: np.ndarray, shape: tuple[int, int], name: str) -> tuple[np.ndarray, bool]:
    """(the mask at the image's size, whether it was resized): resized (nearest neighbour) when
    only the resolution differs (same aspect ratio within 1%)."""
    if mask.shape == shape:
        return mask, False
    if mask.ndim == 2 and abs(mask.shape[0] / mask.shape[1] - shape[0] / shape[1]) <= 0.01 * shape[0] / shape[1]:
        from skimage.transform import resize

        return resize(mask, shape, order=0, preserve_range=True, anti_aliasing=False).astype(bool), True
    raise ImageError(f"The mask of {name} has shape {mask.shape}, which does not fit its image {shape}.")


def _as_image(item: Any) -> np.ndarray:
    if isinstance(item, (str, Path)):
        from .data import read_image

        return read_image(item)
    return np.asarray(item)


def _as_mask(item: Any) -> np.ndarray:
    if isinstance(item, (str, Path)):
        return read_mask(item)
    m = np.asarray(item)
    if m.ndim == 3 and m.shape[-1] in (3, 4):
        m = m[..., :3].any(axis=-1)
    return m != 0 if m.dtype != bool else m


def _method_available(bundle: "ModelBundle", method: str) -> str | None:
    """None if ``method`` works for the bundle, else the reason (one sentence)."""
    if method == "cam":
        from .engine.cam import cam_head

        try:
            cam_head(bundle)
        except LayerError as e:
            return str(e)
    return None


def iter_evaluate_localisation(
    bundle: "ModelBundle",
    images: Sequence[Any],
    masks: Sequence[Any],
    methods: Sequence[str] = ("cam", "gradcam", "gradcam++"),
    target: str = "label",
    labels: "Sequence[int | str | None] | None" = None,
    curves: bool = False,
    tolerance: float = 0,
    level: float = 0.5,
    steps: int = 20,
    baseline: str = "blur",
    names: Sequence[str] | None = None,
    layer: str | None = None,
    batch_size: int = 16,
    shifts: int = 1,
) -> Generator[tuple[int, int], None, LocalisationReport]:
    """:func:`evaluate_localisation` as a generator: yields ``(done, total)`` after each image and
    returns the :class:`LocalisationReport` (``report = yield from ...``, or a napari
    ``thread_worker``'s ``returned`` signal).  Stopping the generator stops the work."""
    from .engine import explain
    from .engine.methods import canonical_method
    from .engine.shifts import check_shifts
    from .preprocess import check_image
    from .validate import check_int, check_number

    shifts = check_shifts(shifts)
    tolerance = check_number(tolerance, "tolerance", 0)
    if not (isinstance(level, str) and level.lower() == "otsu"):
        level = check_number(level, "level", 0, 1)
    steps, batch_size = check_int(steps, "steps", 1), check_int(batch_size, "batch_size", 1)

    if len(images) != len(masks):
        raise GradCamError(f"{len(images)} images but {len(masks)} masks were given; they must pair up.")
    if names is not None and len(names) != len(images):
        raise GradCamError(f"{len(images)} images but {len(names)} names were given.")
    target = str(target).lower()
    if target not in ("label", "predicted"):
        raise GradCamError(f"Unknown target {target!r}; use 'label' (the true class) or 'predicted'.")
    if target == "label":
        if labels is None:
            raise GradCamError("Explaining the true class needs labels; pass labels or use target='predicted'.")
        if len(labels) != len(images):
            raise GradCamError(f"{len(images)} images but {len(labels)} labels were given.")
    wanted = []
    for m in methods:
        c = canonical_method(m)
        if c not in wanted:
            wanted.append(c)
    if not wanted:
        raise GradCamError("No explanation method was given; choose cam, gradcam or gradcam++.")
    notes: list[str] = []
    usable = []
    for m in wanted:
        reason = _method_available(bundle, m)
        if reason is None:
            usable.append(m)
        else:
            notes.append(f"{m} was skipped: {reason}")
    report = LocalisationReport(
        methods=usable, n_images=len(images), notes=notes,
        settings={"model": bundle.architecture, "classes": list(bundle.classes), "target": target,
                  "tolerance": tolerance, "level": level, "curves": bool(curves), "shifts": shifts,
                  **({"steps": int(steps), "baseline": baseline} if curves else {})},
    )
    total = len(images)
    resized = 0
    yield 0, total
    for i in range(total):
        name = str(names[i]) if names is not None else (
            str(images[i]) if isinstance(images[i], (str, Path)) else f"image_{i:04d}")
        mask = _as_mask(masks[i])
        if not mask.any():
            report.n_empty += 1
            yield i + 1, total
            continue
        img = check_image(_as_image(images[i]))
        mask, was_resized = _fit_mask(mask, img.shape[:2], name)
        resized += was_resized
        label = labels[i] if labels is not None else None
        source = "label" if target == "label" and label is not None else "predicted"
        tgt = None if source == "predicted" else bundle.class_index(label)
        for m in usable:
            hm = explain(bundle, img, method=m, target=tgt, layer=layer if m != "cam" else None, shifts=shifts)
            metrics: dict[str, Any] = localisation_scores(hm.data, mask, tolerance=tolerance, level=level)
            metrics["score"] = float(hm.score)
            if curves:
                di = deletion_insertion(bundle, img, hm.data, hm.target_index, steps=steps,
                                        baseline=baseline, batch_size=batch_size)
                metrics["deletion_auc"] = di["deletion_auc"]
                metrics["insertion_auc"] = di["insertion_auc"]
            report.rows.append(LocalisationRow(name, m, hm.target, source, metrics))
        yield i + 1, total
    if resized:
        report.notes.append(f"{resized} mask(s) of another resolution were resized (nearest neighbour) "
                            "to their image's size.")
    if report.n_empty == total:
        report.notes.append("Every mask was empty, so nothing was scored; localisation needs lesion masks.")
    return report


def evaluate_localisation(
    bundle: "ModelBundle",
    images: Sequence[Any],
    masks: Sequence[Any],
    methods: Sequence[str] = ("cam", "gradcam", "gradcam++"),
    target: str = "label",
    labels: "Sequence[int | str | None] | None" = None,
    curves: bool = False,
    progress: Callable[[int, int], Any] | None = None,
    **kwargs: Any,
) -> LocalisationReport:
    """Localisation metrics of several explanation methods over many images.

    Parameters
    ----------
    bundle : ModelBundle
    images : sequence of (H, W) / (H, W, 3|4) arrays or image file paths (read one at a time)
    masks : sequence of (H, W) bool/label arrays or label-image paths (nonzero = lesion), one per
        image.  An image with an empty mask (e.g. a normal one) is skipped and counted in
        ``report.n_empty``.  A mask at another resolution with the same aspect ratio is resized
        (nearest neighbour) to its image.
    methods : any of "cam", "gradcam", "gradcam++".  A method the model does not support (CAM
        without a GAP + linear head, e.g. VGG) is skipped with a note.
    target : "label" (explain the true class, from ``labels``) or "predicted".  With "label", an
        image whose label is None is explained for its predicted class (``target_source`` says so).
    labels : sequence of class names or indices (or None), one per image.
    curves : also compute deletion/insertion AUCs (2 * (steps + 1) forward passes per method and image).
    progress : callable(done, total), called after each image.
    **kwargs : tolerance (pointing-game pixels, default 0), level (fixed threshold, default 0.5),
        steps (20), baseline ("blur"), names (one per image), layer (Grad-CAM layer), batch_size,
        shifts (1; k > 1 averages k x k sub-cell shifts, see :func:`napari_gradcam.engine`).

    Returns
    -------
    LocalisationReport
    """
    gen = iter_evaluate_localisation(bundle, images, masks, methods, target, labels, curves, **kwargs)
    while True:
        try:
            done, total = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(done, total)


# ----------------------------------------------------------------------------- folders
class PairedFiles(list):
    """A list of ``(image_path, mask_path)`` tuples, with ``unmatched``: the images without a mask."""

    def __init__(self, pairs: Iterable[tuple[Path, Path]] = (), unmatched: Iterable[Path] = (),
                 images_dir: Path | None = None, masks_dir: Path | None = None) -> None:
        super().__init__(pairs)
        self.unmatched: list[Path] = list(unmatched)
        self.images_dir = images_dir
        self.masks_dir = masks_dir


def _strip_mask_suffix(stem: str) -> str:
    low = stem.lower()
    for s in MASK_SUFFIXES:
        if low.endswith(s) and len(stem) > len(s):
            return stem[: -len(s)]
    return stem


def _listing(folder: Path) -> list[Path]:
    """Image files under ``folder``, each real file once (links followed without looping; hidden entries ignored)."""
    from .data import is_image_file, walk_files

    files, _ = walk_files(folder)
    return [p for p, _real in files if is_image_file(p)]


def load_masks_folder(images_dir: "str | Path", masks_dir: "str | Path") -> PairedFiles:
    """Pair every image under ``images_dir`` with its mask under ``masks_dir``.

    A mask matches an image when it has the same relative path without the suffix
    (``images/covid/a.png`` <-> ``masks/covid/a.tif``), else the same file stem anywhere under
    ``masks_dir`` when that stem is unique there.  Mask names may end in ``_mask`` (and similar,
    :data:`MASK_SUFFIXES`): ``a_mask.png`` is the mask of ``a.png``; this also lets images and masks
    share one folder.  This is the layout of
    ``napari_gradcam.phantoms.write_dataset(root, ..., mask_dir=...)``.  Masks are label images:
    nonzero is the lesion (see :func:`read_mask`).

    Returns
    -------
    PairedFiles
        A list of ``(image_path, mask_path)`` in image-path order, with ``.unmatched`` (images
        without a mask).

    Raises
    ------
    DatasetError
        A folder is missing, holds no images, or no image has a mask; one sentence.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for what, d in (("image", images_dir), ("mask", masks_dir)):
        if not d.exists():
            raise DatasetError(f"No {what} folder at {d}.")
        if not d.is_dir():
            raise DatasetError(f"{d} is a file, not a folder of {what}s.")
    same = images_dir.resolve() == masks_dir.resolve()
    mask_files = _listing(masks_dir)
    if same:
        mask_files = [p for p in mask_files if _strip_mask_suffix(p.stem) != p.stem]
    by_rel: dict[str, Path] = {}
    by_stem: dict[str, list[Path]] = {}
    for p in mask_files:
        rel = p.relative_to(masks_dir)
        for stem in {p.stem, _strip_mask_suffix(p.stem)}:
            key = str(rel.parent / stem).lower()
            # an exact-stem mask wins over a suffixed one
            if key not in by_rel or stem == p.stem:
                by_rel[key] = p
            by_stem.setdefault(stem.lower(), []).append(p)
    mask_set = set(mask_files)
    images = [p for p in _listing(images_dir) if p not in mask_set]
    if not images:
        raise DatasetError(f"No images were found in {images_dir}.")
    pairs, unmatched = [], []
    for img in images:
        rel = img.relative_to(images_dir)
        m = by_rel.get(str(rel.parent / img.stem).lower())
        if m is None:
            cands = sorted(set(by_stem.get(img.stem.lower(), [])))
            m = cands[0] if len(cands) == 1 else None
        if m is None or m == img:
            unmatched.append(img)
        else:
            pairs.append((img, m))
    if not pairs:
        raise DatasetError(
            f"None of the {len(images)} images in {images_dir} has a mask in {masks_dir}; a mask needs the "
            "image's relative path or file name (any image suffix, optionally ending in _mask)."
        )
    return PairedFiles(pairs, unmatched, images_dir, masks_dir)


def _folder_label(images_dir: Path, path: Path, classes: Sequence[str]) -> str | None:
    """The class named by the image's top subfolder (case-insensitive), else None."""
    parts = path.relative_to(images_dir).parts
    if len(parts) < 2:
        return None
    lookup = {c.lower(): c for c in classes}
    return lookup.get(parts[0].lower())


def localize_folder(
    model: "str | Path | ModelBundle",
    images_dir: "str | Path",
    masks_dir: "str | Path",
    methods: "Sequence[str] | str" = ("cam", "gradcam", "gradcam++"),
    json_path: "str | Path | None" = None,
    curves: bool = False,
    target: str = "label",
    progress: Callable[[int, int], Any] | None = None,
    device: str = "auto",
    **kwargs: Any,
) -> LocalisationReport:
    """Localisation metrics of a model's explanations over a folder of images and one of masks.

    The whole job of ``napari-gradcam localize MODEL IMAGES MASKS``: load the model (a path or a
    ModelBundle), pair images with masks (:func:`load_masks_folder`), take each image's true class
    from its class subfolder (``images/pneumonia/x.png``; an image outside a folder named after one
    of the model's classes is explained for its predicted class), run
    :func:`evaluate_localisation`, and write ``json_path`` if given.

    Parameters
    ----------
    model : path of a model file, or a ModelBundle
    images_dir, masks_dir : folders (see :func:`load_masks_folder`)
    methods : a method name or several: "cam", "gradcam", "gradcam++"
    json_path : where to write the report as JSON (optional)
    curves : also compute deletion/insertion AUCs (slower)
    target : "label" or "predicted"
    progress : callable(done, total)
    device : for loading a model file ("auto", "cpu", "cuda", ...)
    **kwargs : tolerance, level, steps, baseline, layer, batch_size (see :func:`evaluate_localisation`)

    Returns
    -------
    LocalisationReport
        Unmatched images are listed in its notes.
    """
    if isinstance(model, (str, Path)):
        from .bundle import load_model

        bundle = load_model(model, device=device)
    else:
        bundle = model
    if isinstance(methods, str):
        methods = [s for s in methods.replace(",", " ").split() if s]
    pairs = load_masks_folder(images_dir, masks_dir)
    root = Path(images_dir)
    labels = [_folder_label(root, img, bundle.classes) for img, _ in pairs]
    names = [img.relative_to(root).as_posix() for img, _ in pairs]
    report = evaluate_localisation(
        bundle, [p for p, _ in pairs], [m for _, m in pairs], methods=methods, target=target,
        labels=labels, curves=curves, progress=progress, names=names, **kwargs,
    )
    if pairs.unmatched:
        from .errors import shown as escaped

        shown = ", ".join(escaped(p.relative_to(root).as_posix()) for p in pairs.unmatched[:5])
        more = f" and {len(pairs.unmatched) - 5} more" if len(pairs.unmatched) > 5 else ""
        report.notes.append(f"{len(pairs.unmatched)} image(s) had no mask and were left out: {shown}{more}.")
    if target == "label" and any(lab is None for lab in labels):
        n = sum(lab is None for lab in labels)
        report.notes.append(f"{n} image(s) are not in a subfolder named after a class, so their predicted "
                            "class was explained.")
    report.settings.update({"images_dir": str(images_dir), "masks_dir": str(masks_dir),
                            "n_unmatched": len(pairs.unmatched)})
    if isinstance(model, (str, Path)):
        report.settings["model_path"] = str(model)
    if json_path is not None:
        report.to_json(json_path)
    return report

"""Deletion and insertion curves (Petsiuk et al. 2018): the class probability as the top-ranked pixels go or come."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import GradCamError, ImageError
from .metrics import _check_pair

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import ModelBundle

CURVE_KEYS = ("deletion_auc", "insertion_auc")
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

    from ..preprocess import bundle_tensor

    out = []
    bundle.model.eval()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = bundle_tensor(bundle, images[i: i + batch_size], vrange=vrange).to(bundle.device)
            out.append(torch.softmax(bundle.model(x).float(), dim=1)[:, index].cpu())
    return torch.cat(out).numpy().astype(np.float64)


def _check_curve_arguments(img: np.ndarray, hm: np.ndarray, steps, baseline: str) -> int:
    """The number of steps, checked with the heatmap's shape and the baseline (one sentence each)."""
    if hm.shape != img.shape[:2]:
        raise ImageError(f"The heatmap {hm.shape} does not match the image {img.shape[:2]}.")
    _check_pair(hm, np.zeros(hm.shape, bool))
    steps = int(steps)
    if steps < 1:
        raise GradCamError(f"Deletion/insertion needs at least 1 step, not {steps}.")
    if baseline not in BASELINES:
        raise GradCamError(f"Unknown baseline {baseline!r}; choose {', '.join(BASELINES)}.")
    return steps


def _perturbed(src: np.ndarray, base: np.ndarray, hm: np.ndarray,
               fractions: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The deleted and the inserted images, one per fraction: the top ``round(f * H * W)`` pixels of the
    heatmap ``hm`` (H, W) (ties in row-major order) taken from ``base`` into ``src`` / from ``src`` into
    ``base`` (both (H, W[, C]) float in [0, 1])."""
    h, w = hm.shape
    n = h * w
    order = np.argsort(-hm.ravel(), kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)  # 0 = most relevant pixel
    rank = rank.reshape(h, w)
    deleted, inserted = [], []
    for k in np.rint(fractions * n).astype(np.int64):
        top = rank < k
        if src.ndim == 3:
            top = top[..., None]
        deleted.append(np.where(top, base, src))
        inserted.append(np.where(top, src, base))
    return deleted, inserted


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

    from ..preprocess import check_image, to_unit

    img = check_image(image)
    hm = np.asarray(heatmap)
    steps = _check_curve_arguments(img, hm, steps, baseline)
    index = bundle.class_index(target_index)
    # work in the unit range of the original image (alpha dropped, NaN/inf handled as for predict)
    src = to_unit(img)
    base = _baseline_image(src, baseline, blur_sigma)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    deleted, inserted = _perturbed(src, base, hm, fractions)
    probs = _target_probabilities(bundle, deleted + inserted, index, (0.0, 1.0), max(1, int(batch_size)))
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

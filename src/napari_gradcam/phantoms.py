"""Synthetic frontal chest radiographs with known lesion masks.

This module generates deterministic, procedurally drawn posterior-anterior
(PA) chest X-ray *phantoms* for three classes:

``"normal"``
    No lesion; the mask is empty.
``"pneumonia"``
    Lobar consolidation: one dense, fairly homogeneous opacity filling part
    of **one** lung (random side and zone, usually lower or middle), with a
    sharp border along a fissure on one side and soft borders elsewhere.
``"covid"``
    Bilateral, peripheral ground-glass opacities: several faint hazy patches
    along the outer (pleural) edge of **both** lungs, mostly in the lower
    zones.

Images follow the X-ray display convention (air dark, bone and soft tissue
bright).  Every lesion is drawn as a reduction of the lung's air content, so
it is confined to the visible lung fields, and the returned mask marks where
the opacity was added.

Anatomy depends only on ``seed`` (not on ``label`` nor on ``size``): the
``"pneumonia"`` and ``"covid"`` phantoms of a seed are the ``"normal"``
phantom of that seed plus a lesion, and a seed rendered at 64 px and at
256 px shows the same patient.  Only numpy, scipy and scikit-image are used.

This module checks the arguments, derives the seeds and writes the files; the drawing itself (fields,
anatomy, lesions, exposure) is in :mod:`napari_gradcam.phantom_drawing`.
"""

from __future__ import annotations

import pathlib
from typing import NamedTuple

import numpy as np
from skimage import io as skio

from .phantom_drawing import _SALT, CLASSES, _render

__all__ = [
    "CLASSES",
    "Phantom",
    "make_xray",
    "make_batch",
    "write_dataset",
    "make_mosaic",
]

_MIN_SIZE = 16


class Phantom(NamedTuple):
    """One synthetic chest radiograph.

    Attributes
    ----------
    image : numpy.ndarray
        ``(size, size)`` ``uint8`` radiograph, X-ray convention (air and lungs
        dark, bone and soft tissue bright).
    mask : numpy.ndarray
        ``(size, size)`` ``bool`` lesion mask, True on the lesion; all False
        for ``"normal"``.
    label : str
        The class name, one of :data:`CLASSES`.
    """

    image: np.ndarray
    mask: np.ndarray
    label: str


# --------------------------------------------------------------------------
# argument checking
# --------------------------------------------------------------------------
def _check_label(label) -> str:
    if not isinstance(label, str) or label not in CLASSES:
        raise ValueError(
            f"unknown label {label!r}; valid labels are {', '.join(map(repr, CLASSES))}"
        )
    return label


def _check_classes(classes) -> tuple[str, ...]:
    if isinstance(classes, str):
        classes = (classes,)
    classes = tuple(classes)
    if not classes:
        raise ValueError("classes must name at least one of " + ", ".join(map(repr, CLASSES)))
    for c in classes:
        _check_label(c)
    return classes


def _check_size(size, name: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {_MIN_SIZE}, got {size!r}")
    size = int(size)
    if size < _MIN_SIZE:
        raise ValueError(f"{name} must be >= {_MIN_SIZE} pixels, got {size}")
    return size


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return seed


def _check_count(n, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    return int(n)


def _derive_seed(*entropy: int) -> int:
    """A 32-bit seed derived from several non-negative integers."""
    return int(np.random.SeedSequence([_SALT, *entropy]).generate_state(1)[0])


def make_xray(label: str = "normal", size: int = 256, seed: int = 0) -> Phantom:
    """Generate one synthetic frontal (PA) chest radiograph.

    Parameters
    ----------
    label : str, optional
        One of :data:`CLASSES` (``"normal"``, ``"pneumonia"``, ``"covid"``).
    size : int, optional
        Side length in pixels (>= 16).  The image is square.
    seed : int, optional
        Non-negative seed.  The result is fully determined by
        ``(label, size, seed)``.  The anatomy depends only on ``seed``, so the
        lesion classes of a seed equal its ``"normal"`` phantom plus a lesion.

    Returns
    -------
    Phantom
        ``image``: ``(size, size)`` ``uint8``; ``mask``: ``(size, size)``
        ``bool`` (all False for ``"normal"``); ``label``: ``str``.

    Raises
    ------
    ValueError
        If ``label`` is not one of :data:`CLASSES`, ``size`` < 16 or ``seed``
        is negative.
    """
    label = _check_label(label)
    size = _check_size(size)
    seed = _check_seed(seed)
    img, mask = _render(label, size, seed)
    return Phantom(img, mask, label)


def _sample_seed(seed: int, label: str, i: int) -> int:
    return _derive_seed(seed, 101, CLASSES.index(label), i)


def make_batch(n_per_class: int, size: int = 64, seed: int = 0,
               classes=CLASSES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate a labelled batch of phantoms, classes interleaved.

    Sample ``k`` is ``classes[k % len(classes)]``; every sample is a different
    patient (its per-sample seed is derived from ``seed``, the class and the
    index), so batches made with different ``seed`` do not share patients.

    Parameters
    ----------
    n_per_class : int
        Number of images per class (>= 0).
    size : int, optional
        Image side length in pixels (>= 16).
    seed : int, optional
        Non-negative base seed.
    classes : sequence of str, optional
        Class names (a subset of :data:`CLASSES`, any order).

    Returns
    -------
    images : numpy.ndarray
        ``(N, size, size)`` ``uint8`` with ``N = n_per_class * len(classes)``.
    masks : numpy.ndarray
        ``(N, size, size)`` ``bool`` lesion masks.
    labels : numpy.ndarray
        ``(N,)`` ``int64`` indices into ``classes``.
    """
    n = _check_count(n_per_class, "n_per_class")
    size = _check_size(size)
    seed = _check_seed(seed)
    classes = _check_classes(classes)
    N = n * len(classes)
    images = np.empty((N, size, size), np.uint8)
    masks = np.empty((N, size, size), bool)
    labels = np.empty((N,), np.int64)
    k = 0
    for i in range(n):
        for ci, cname in enumerate(classes):
            images[k], masks[k] = _render(cname, size, _sample_seed(seed, cname, i))
            labels[k] = ci
            k += 1
    return images, masks, labels


def write_dataset(root, n_per_class: int, size: int = 64, seed: int = 0,
                  classes=CLASSES, mask_dir=None) -> pathlib.Path:
    """Write a folder-per-class PNG data set.

    Images go to ``root/<class>/<class>_<i:04d>.png`` (8-bit grayscale).  If
    ``mask_dir`` is given, masks go to ``mask_dir/<class>/<same name>.png`` as
    ``uint8`` label images (0 background, 255 lesion), for every class
    (``"normal"`` masks are all zero).  The images are the same as those of
    :func:`make_batch` with the same arguments.

    Parameters
    ----------
    root : str or os.PathLike
        Output folder (created if needed).
    n_per_class : int
        Number of images per class.
    size : int, optional
        Image side length in pixels (>= 16).
    seed : int, optional
        Non-negative base seed.
    classes : sequence of str, optional
        Class names (subset of :data:`CLASSES`).
    mask_dir : str or os.PathLike, optional
        Where to write masks; no masks are written if None.

    Returns
    -------
    pathlib.Path
        ``Path(root)``.
    """
    n = _check_count(n_per_class, "n_per_class")
    size = _check_size(size)
    seed = _check_seed(seed)
    classes = _check_classes(classes)
    root = pathlib.Path(root)
    mroot = None if mask_dir is None else pathlib.Path(mask_dir)
    for cname in classes:
        (root / cname).mkdir(parents=True, exist_ok=True)
        if mroot is not None:
            (mroot / cname).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, mask = _render(cname, size, _sample_seed(seed, cname, i))
            name = f"{cname}_{i:04d}.png"
            skio.imsave(root / cname / name, img, check_contrast=False)
            if mroot is not None:
                skio.imsave(mroot / cname / name, mask.astype(np.uint8) * 255,
                            check_contrast=False)
    return root


def make_mosaic(shape=(2048, 2048), tile: int = 512, seed: int = 0,
                classes=CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """A large image tiled with whole phantom radiographs.

    Tiles of ``tile`` x ``tile`` px are laid row-major in a grid covering
    ``shape`` (the last row/column is cropped at the edge).  Tile ``t`` shows
    class ``classes[t % len(classes)]`` with a seed derived from ``seed`` and
    ``t``.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(H, W)`` of the output, each >= 1.
    tile : int, optional
        Tile side length in pixels (>= 16).
    seed : int, optional
        Non-negative base seed.
    classes : sequence of str, optional
        Class names (subset of :data:`CLASSES`) to cycle through.

    Returns
    -------
    image : numpy.ndarray
        ``(H, W)`` ``uint8`` mosaic.
    class_map : numpy.ndarray
        ``(H, W)`` ``int8``: at each pixel, the index into ``classes`` of the
        radiograph it belongs to.
    """
    try:
        H, W = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a pair of positive integers, got {shape!r}") from None
    if H < 1 or W < 1:
        raise ValueError(f"shape must be a pair of positive integers, got {shape!r}")
    tile = _check_size(tile, "tile")
    seed = _check_seed(seed)
    classes = _check_classes(classes)
    image = np.zeros((H, W), np.uint8)
    class_map = np.zeros((H, W), np.int8)
    nr, nc = -(-H // tile), -(-W // tile)
    for r in range(nr):
        for cc in range(nc):
            t = r * nc + cc
            ci = t % len(classes)
            img, _ = _render(classes[ci], tile, _derive_seed(seed, 202, t))
            y0, x0 = r * tile, cc * tile
            h, w = min(tile, H - y0), min(tile, W - x0)
            image[y0:y0 + h, x0:x0 + w] = img[:h, :w]
            class_map[y0:y0 + h, x0:x0 + w] = ci
    return image, class_map

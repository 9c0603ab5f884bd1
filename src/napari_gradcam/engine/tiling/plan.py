"""What is fixed before a tiled run starts: the tile grid, the chains of tiles that own each pixel's
probabilities, the blending grid's step, the classes, the checked arguments (:class:`Plan`)."""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ...errors import GradCamError, ParameterError
from ...preprocess import _shape_dtype, check_dtype, check_shape
from ...validate import check_int, check_number, is_integer

if TYPE_CHECKING:  # pragma: no cover
    from ...bundle import ModelBundle

Progress = tuple[int, int]  # (tiles done, tiles in total)
MAX_TILE = 16384
Owners = tuple[dict, dict]  # chain_ownership of the rows and of the columns


def default_tile(bundle: "ModelBundle") -> int:
    """The tile size (pixels) that shows the model the scale it was trained at: the typical size of its
    training images (``config.training["source_size"]``, recorded by training), else its input size."""
    size = (getattr(bundle.config, "training", None) or {}).get("source_size")
    if isinstance(size, (int, float)) and not isinstance(size, bool) and 8 <= size <= MAX_TILE:
        return int(round(size))
    return int(bundle.input_size)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets (sorted) of tiles covering ``[0, length)``: every ``stride``, and the last one
    ending exactly at ``length``.  Where the stride does not divide the tile, the multiples of the tile
    are added, so that the non-overlapping chain of :func:`chain_starts` exists at every overlap."""
    if length <= tile:
        return [0]
    starts = set(range(0, length - tile + 1, stride)) | {length - tile}
    if tile % stride:
        starts |= set(range(0, length - tile + 1, tile))
    return sorted(starts)


def blend_factor(tile: int, stride: int) -> int:
    """The coarse-grid step (pixels) for blending: the largest divisor of gcd(tile, stride) that
    leaves at least 64 grid cells per tile side (tile maps are far coarser than that)."""
    g = math.gcd(tile, stride)
    return max(d for d in range(1, g + 1) if g % d == 0 and d <= max(1, tile // 64))


def chain_starts(starts: Sequence[int], tile: int) -> list[int]:
    """The tiles of one axis's grid (``starts``, as :func:`tile_starts` gives them) that cover the axis
    with the least overlap: 0, then each time the largest start at most one tile further, up to the
    last start (the tile that ends at the edge).  On :func:`tile_starts`' grids these are the multiples
    of the tile plus the shifted last tile: the non-overlapping grid."""
    chain = [starts[0]]
    while chain[-1] != starts[-1]:
        chain.append(starts[bisect_right(starts, chain[-1] + tile) - 1])
    return chain


def chain_ownership(length: int, tile: int, stride: int, f: int = 1) -> dict[int, tuple[int, int]]:
    """{chain tile start: (lo, hi)}: the pixels [lo, hi) of the axis [0, length) whose probabilities
    come from that tile of :func:`chain_starts`, those nearest its centre (boundaries at the midpoints
    between consecutive centres, rounded to the blending step ``f``; tile edges for multiples of the
    tile).  The ranges partition the axis, each within its own tile."""
    chain = chain_starts(tile_starts(length, tile, stride), tile)
    cuts = [(a + b + tile + f) // (2 * f) * f for a, b in pairwise(chain)]  # midpoints, rounded half up
    edges = [0, *cuts, length]
    return {s: (lo, hi) for s, lo, hi in zip(chain, edges, edges[1:])}


def _owners(Hp: int, Wp: int, tile: int, stride: int, f: int) -> Owners:
    """The chain ownership of both axes of the padded image."""
    return chain_ownership(Hp, tile, stride, f), chain_ownership(Wp, tile, stride, f)


def _padded_shape(H: int, W: int, tile: int, f: int) -> tuple[int, int]:
    """Image size after edge padding: at least one tile, and (size - tile) a multiple of f."""
    return tuple(tile + -(-max(0, n - tile) // f) * f for n in (H, W))  # type: ignore[return-value]


@dataclass
class _Plan:
    """Everything fixed about one tiled run."""

    tile: int
    stride: int
    method: str
    layers: list[str]  # where the method is computed
    targets: list[int]  # class indices whose maps are computed
    vrange: tuple[float, float]
    batch_size: int


def _check_large_image(image) -> tuple[tuple[int, ...], np.dtype]:
    """Dtype and shape of an image of any size, from metadata only (nothing is loaded)."""
    shape, dtype = _shape_dtype(image)
    check_dtype(dtype)
    check_shape(shape, max_pixels=None)
    return shape, dtype


def _resolve_classes(bundle: "ModelBundle", classes, lazy: bool) -> tuple[list[int], int | None]:
    """-> (indices to compute, top-k or None)."""
    if classes is None or (isinstance(classes, str) and classes.lower() == "all"):
        return list(range(bundle.n_classes)), None
    if is_integer(classes):
        k = int(classes)
        if not 1 <= k <= bundle.n_classes:
            raise GradCamError(f"Top-k needs k between 1 and {bundle.n_classes}, not {k}.")
        if lazy:
            raise GradCamError("For a lazy (dask) image, name the classes or use all; top-k needs the whole image first.")
        return list(range(bundle.n_classes)), k
    if isinstance(classes, str):
        classes = [classes]
    if not isinstance(classes, (list, tuple, np.ndarray)):
        raise ParameterError(f"classes must be None, 'all', a number k (the top k) or a list of class names or "
                             f"indices, not {type(classes).__name__} {classes!r:.40}.")
    idx = [bundle.class_index(c) for c in classes]
    if not idx:
        raise GradCamError("An empty list of classes was given.")
    return list(dict.fromkeys(idx)), None


def _check_arguments(bundle: "ModelBundle", tile, overlap, batch_size, chunk, mode) -> tuple[int, int, int, int]:
    """(tile, stride, batch_size, chunk) checked: types and ranges, one sentence for anything else."""
    if mode not in ("tiles", "fullconv"):
        raise GradCamError(f"Unknown tiling mode {mode!r}; choose 'tiles' or 'fullconv'.")
    tile = default_tile(bundle) if tile is None else check_int(tile, "The tile size")
    if not 8 <= tile <= MAX_TILE:
        raise GradCamError(f"Tiles must be between 8 and {MAX_TILE} pixels, not {tile}.")
    overlap = check_number(overlap, "Overlap", 0, 0.95)
    stride = max(1, int(round(tile * (1 - overlap))))
    return tile, stride, check_int(batch_size, "batch_size", 1), check_int(chunk, "chunk", 1)

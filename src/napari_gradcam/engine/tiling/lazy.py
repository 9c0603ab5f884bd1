"""The lazy path: images too large for memory (or dask inputs) as a dask graph of tile groups and output
chunks, on the same global tile grid as the in-memory path (same result)."""

from __future__ import annotations

import uuid
from bisect import bisect_left
from typing import TYPE_CHECKING

import numpy as np

from ...errors import GradCamError, ImageError
from ...generators import run_to_end
from ...preprocess import value_range
from ..result import TiledHeatmaps
from .blend import _blend, _cat, _pad, _to_pixels
from .network import _run_tiles
from .plan import _owners, _padded_shape, _Plan, blend_factor, tile_starts

if TYPE_CHECKING:  # pragma: no cover
    from ...bundle import ModelBundle

def _block_range(block) -> np.ndarray:
    """[[finite min, finite max]] of one block ([[inf, -inf]] when it has no finite value)."""
    try:
        lo, hi = value_range(np.asarray(block))
    except ImageError:
        lo, hi = np.inf, -np.inf
    return np.array([[lo, hi]], dtype=np.float64)


def _lazy_value_range(image) -> tuple[float, float]:
    """The finite (min, max) of a dask image, block by block (one streaming pass, bounded memory);
    the same rule as :func:`preprocess.value_range` (NaN and infinities ignored, booleans 0..1)."""
    import dask

    rgb = image[..., :3] if image.ndim == 3 else image
    parts = dask.compute(*[dask.delayed(_block_range)(b) for b in rgb.to_delayed().ravel()])
    both = np.concatenate(parts)
    lo, hi = float(both[:, 0].min()), float(both[:, 1].max())
    if lo > hi:
        raise ImageError("The image has no finite values (all NaN or infinite).")
    return lo, hi


class _Window:
    """A read-only view of an array for ``dask.array.from_array``, which copies numpy arrays whole
    (an image too large for memory, a memory map, a zero-stride broadcast); blocks are read on demand."""

    def __init__(self, arr) -> None:
        self._arr = arr
        self.shape, self.dtype, self.ndim = tuple(arr.shape), np.dtype(arr.dtype), len(arr.shape)

    def __getitem__(self, key) -> np.ndarray:
        return np.asarray(self._arr[key])


def _is_lazy(image) -> bool:
    """A dask array (or another array computed on demand)."""
    return hasattr(image, "dask") or (hasattr(image, "compute") and not isinstance(image, np.ndarray))


def _as_lazy(image, shape: tuple[int, ...], step: int, topk: int | None):
    """An image whose maps would not fit in memory as a dask array of (step, step) blocks, read on demand."""
    H, W = shape[:2]
    if topk is not None:
        raise GradCamError(f"An image of {H} x {W} pixels is processed lazily (chunk by chunk); name the classes "
                           "or use all, since top-k needs the whole image first.")
    import dask.array as da

    # name=False: no hashing of the data; _Window: from_array would copy a numpy array whole
    return da.from_array(_Window(image), chunks=(step, step) + tuple(shape[2:]), name=False)


def _lazy(bundle: "ModelBundle", image, plan: _Plan, chunk: int) -> TiledHeatmaps:
    """Dask path in two phases, so no tile runs twice.

    1. One task per *tile group* (the tiles whose top-left corner lies in one chunk) runs the
       network on its region (the chunk plus up to one tile) and returns the small per-tile results.
    2. One task per *output chunk* blends the groups that can reach it (its own and its eight
       neighbours; tiles are never larger than a chunk) on the chunk plus a one-cell margin, so
       the upsampled pixels equal the numpy path's.
    Memory per task is bounded by (chunk + tile)^2 pixels, whatever the image size, and building
    the graph is cheap (microseconds per chunk), so a 100k x 100k image is ready to view at once.
    """
    import dask.array as da

    H, W = image.shape[:2]
    tile, T = plan.tile, len(plan.targets)
    f = blend_factor(tile, plan.stride)
    chunk = -(-max(chunk, tile) // f) * f
    image = _pad(image, _padded_shape(H, W, tile, f))
    Hp, Wp = image.shape[:2]
    ys, xs = tile_starts(Hp, tile, plan.stride), tile_starts(Wp, tile, plan.stride)
    owners = _owners(Hp, Wp, tile, plan.stride, f)
    y_edges, x_edges = list(range(0, Hp, chunk)), list(range(0, Wp, chunk))
    # input blocks aligned with the output chunks: a tile group's region lies within its own block
    # and the next ones down and right
    src = image.rechunk((chunk, chunk) + image.shape[2:])

    def run_group(parts, origin, rows, cols):
        y0, x0 = origin
        ey, ex = rows[-1] + tile - y0, cols[-1] + tile - x0  # the region's extent
        region = np.concatenate(
            [np.concatenate([np.asarray(p)[: ey - a * chunk, : ex - b * chunk] for b, p in enumerate(row)], axis=1)
             for a, row in enumerate(parts)], axis=0)
        corners = [(y, x) for y in rows for x in cols]
        probs, maps = run_to_end(_run_tiles(bundle, region, origin, corners, plan))
        return corners, probs[:, plan.targets], maps

    def blend_chunk(groups, box) -> np.ndarray:
        corners = [c for g in groups for c in g[0]]
        probs = np.concatenate([g[1] for g in groups])
        maps = np.concatenate([g[2] for g in groups])
        y0, y1, x0, x1 = box
        ext = (max(0, y0 - f), min(Hp, y1 + f), max(0, x0 - f), min(Wp, x1 + f))
        heat, prob = _blend(probs, maps, corners, ext, tile, owners, f)
        both = _to_pixels(_cat(heat, prob), f)
        return both[:, y0 - ext[0] : y1 - ext[0], x0 - ext[2] : x1 - ext[2]]

    from dask.highlevelgraph import HighLevelGraph

    name, layer = _task_graph(src, (ys, xs), (y_edges, x_edges), chunk, tile, (Hp, Wp), run_group, blend_chunk)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[src])
    chunks = ((2 * T,), tuple(min(chunk, Hp - y) for y in y_edges), tuple(min(chunk, Wp - x) for x in x_edges))
    both = da.Array(graph, name, chunks, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))[:, :H, :W]
    n_tiles = len(ys) * len(xs)
    return TiledHeatmaps(both[:T], both[T:], [bundle.classes[i] for i in plan.targets], list(plan.targets), n_tiles,
                         tile, plan.stride, plan.method, "tiles", {"chunk": chunk, "blend_step": f})


def _task_graph(src, starts, edges, chunk: int, tile: int, padded: tuple[int, int], run_group, blend_chunk):
    """(output name, graph layer) of the lazy path: one ``run_group`` task per tile group (the tile rows
    and columns ``starts`` starting in one chunk of ``edges``), one ``blend_chunk`` task per output chunk.

    The graph is written out directly, with named keys: building it costs microseconds per chunk, where
    dask.delayed would hash (pickle) the model and re-optimise the input graph for every task (minutes
    for a 100k x 100k image)."""
    (ys, xs), (y_edges, x_edges), (Hp, Wp) = starts, edges, padded
    extra_axes = (0,) * (src.ndim - 2)  # the channel axis is one block
    token = uuid.uuid4().hex
    gname, name = f"napari-gradcam-tiles-{token}", f"napari-gradcam-heatmaps-{token}"
    # the tile rows / columns starting in each chunk (bisect: no scan over all tiles per chunk)
    row_sets = [ys[bisect_left(ys, y0) : bisect_left(ys, y0 + chunk)] for y0 in y_edges]
    col_sets = [xs[bisect_left(xs, x0) : bisect_left(xs, x0 + chunk)] for x0 in x_edges]
    layer: dict = {}
    for i, y0 in enumerate(y_edges):
        for j, x0 in enumerate(x_edges):
            rows, cols = row_sets[i], col_sets[j]
            if not rows or not cols:
                continue
            n_down = 2 if rows[-1] + tile > y0 + chunk else 1
            n_right = 2 if cols[-1] + tile > x0 + chunk else 1
            parts = [[(src.name, a, b, *extra_axes) for b in range(j, j + n_right)] for a in range(i, i + n_down)]
            layer[(gname, i, j)] = (run_group, parts, [y0, x0], list(rows), list(cols))
    for i, y0 in enumerate(y_edges):
        for j, x0 in enumerate(x_edges):
            box = [y0, min(y0 + chunk, Hp), x0, min(x0 + chunk, Wp)]
            near = [(gname, a, b) for a in (i - 1, i, i + 1) for b in (j - 1, j, j + 1) if (gname, a, b) in layer]
            layer[(name, 0, i, j)] = (blend_chunk, near, box)
    return name, layer

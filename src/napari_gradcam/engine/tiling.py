"""Multi-class heatmaps over images larger than the network input.

Two modes:

``mode="tiles"`` (default, any method)
    Tiles of ``tile`` pixels on a regular grid with step ``stride = tile * (1 - overlap)``
    (plus the multiples of the tile where the stride does not divide it: see below);
    the last row and column are shifted back so the WHOLE image is covered (an image smaller
    than a tile is edge-padded, and the bottom/right edge by < f pixels so every tile starts on
    the blending grid).  Tiles run through the network in batches.  Each tile
    contributes, for class c, ``p_c(tile) * map_c / max(map_c)`` (its probability times its
    normalised map), weighted by a smooth Hann window, so overlapping tiles blend without
    seams; the per-pixel result is the weighted mean.  The probability maps (which give the
    dominant class, the class breakdown and the mean probabilities) are NOT blended: each pixel
    takes the probabilities of one tile of a *chain* per axis (:func:`chain_starts`: the grid's
    tiles that cover the image with the least overlap: the non-overlapping grid, which the grid holds
    at every overlap: a stride that does not divide the tile adds those tiles), the one whose centre
    is nearest, so each pixel is counted once.  A tile
    across two regions is rightly called by the abnormal one, so a blend of all overlapping tiles
    would let abnormal classes eat normal neighbours (at 50% overlap three tiles in four straddle
    the cells of a tile-aligned mosaic).  The heat maps stay the smooth blend of all tiles.
    Blending runs on a grid of step f pixels (8 for 512 px tiles at 50% overlap; 1 when tiles are
    small), whose result is upsampled once: tile maps are far coarser than that grid, so nothing
    visible is lost.
    Memory is bounded by the batch size plus the output; a dask input, or an image whose maps
    would not fit in memory (a huge numpy, memory-mapped or zarr array), is processed lazily,
    output chunk by output chunk, on the same global tile grid (same result as numpy).

``mode="fullconv"`` (CAM only, numpy images)
    The convolutional trunk runs ONCE over the whole image (rescaled so a tile becomes the
    network input size), and the head is applied at every feature position.  Averaging the
    local logits over a tile-sized window gives the logits of a tile centred there (exact for a
    GAP + linear head, up to border effects of the receptive field), so this is a dense
    sliding-window classification for the price of one pass.  Trade-offs: CAM only; padding
    effects differ from real tiles at tile-sized context; the whole image's activations must fit
    in memory (use tiles for gigapixel images).
"""

from __future__ import annotations

import math
import uuid
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Generator, Sequence

import numpy as np

from ..errors import GradCamError, ImageError, ParameterError
from ..generators import run_to_end
from ..numerics import check_logits, check_maps
from ..validate import check_bool, check_bundle, check_int, check_number, is_integer
from .budget import check_fullconv, check_tiling, check_time, tiling_cost
from ..preprocess import (
    MAX_PIXELS, _as_array_like, _shape_dtype, check_dtype, check_shape, to_channels, to_unit, value_range,
)
from .cam import local_logits
from .layers import resolve_layers
from .methods import get_method
from .result import TiledHeatmaps

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..bundle import ModelBundle

Progress = tuple[int, int]  # (tiles done, tiles in total)
WINDOW_FLOOR = 1e-3  # the window never reaches 0, so a pixel seen by one tile at its edge stays defined
FULLCONV_MAX_PIXELS = 40_000_000
IN_MEMORY_BYTES = 4 << 30  # numpy results (heatmaps + probability maps) larger than this are computed lazily
MAX_TILE = 16384


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


def blend_window(tile: int) -> np.ndarray:
    """(tile, tile) float32 separable Hann window, floored at WINDOW_FLOOR."""
    w1 = np.sin(np.pi * (np.arange(tile) + 0.5) / tile) ** 2
    return np.maximum(np.outer(w1, w1), WINDOW_FLOOR).astype(np.float32)


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


def _run_tiles(
    bundle: "ModelBundle", region: np.ndarray, origin: tuple[int, int], corners: Sequence[tuple[int, int]], plan: _Plan
) -> Generator[int, None, tuple[np.ndarray, np.ndarray]]:
    """Run the network on tiles taken from ``region`` (whose top-left is ``origin`` in the image).

    Yields the number of tiles done after each batch; returns
    probs (N, n_classes) float32 and maps (N, T, h, w) float32 (ReLU'd, T = len(plan.targets)).
    """
    import torch

    oy, ox = origin
    probs, maps = [], []
    bundle.model.eval()
    for i in range(0, len(corners), plan.batch_size):
        batch = corners[i : i + plan.batch_size]
        tiles = [region[y - oy : y - oy + plan.tile, x - ox : x - ox + plan.tile] for y, x in batch]
        x = _tiles_to_tensor(bundle, tiles, plan.vrange).to(bundle.device)
        out = get_method(plan.method).compute(bundle, x, plan.targets, plan.layers)
        where = f"the tiles at {batch[0]}..{batch[-1]} (y, x)"
        check_logits(bundle, out.logits, x, what=where)
        check_maps(bundle, out.maps, plan.method, "+".join(plan.layers) or None, x)
        probs.append(torch.softmax(out.logits, dim=1).cpu())
        maps.append(torch.relu(out.maps).cpu())
        yield min(i + plan.batch_size, len(corners))
    return torch.cat(probs).numpy(), torch.cat(maps).numpy()


def _tiles_to_tensor(bundle: "ModelBundle", tiles: list[np.ndarray], vrange) -> "torch.Tensor":
    """Equal-sized tiles -> (B, C, S, S) normalised batch, resized in one call (same result as
    preprocess.image_to_tensor on each tile)."""
    import torch
    import torch.nn.functional as F

    c = bundle.config
    x = torch.from_numpy(np.stack([to_channels(to_unit(t, vrange), c.in_channels) for t in tiles]))
    h, w = x.shape[-2:]
    if (h, w) != (c.input_size, c.input_size):
        x = F.interpolate(x, size=(c.input_size, c.input_size), mode="bilinear", align_corners=False,
                          antialias=bool(h > c.input_size or w > c.input_size))
    mean = torch.tensor(c.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(c.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std


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


Owners = tuple[dict, dict]  # chain_ownership of the rows and of the columns


def _owners(Hp: int, Wp: int, tile: int, stride: int, f: int) -> Owners:
    """The chain ownership of both axes of the padded image."""
    return chain_ownership(Hp, tile, stride, f), chain_ownership(Wp, tile, stride, f)


def _normalised_maps(probs: np.ndarray, maps: np.ndarray) -> torch.Tensor:
    """(N, T, h, w) each tile's maps divided by their peak (0 where empty), times its probability."""
    import torch

    m = torch.from_numpy(maps).float()
    peaks = m.amax(dim=(2, 3), keepdim=True)
    p = torch.from_numpy(probs).float()
    return torch.where(peaks > 0, m / peaks.clamp_min(1e-30), torch.zeros_like(m)) * p[:, :, None, None]


def _owned_cells(owners: Owners, corner: tuple[int, int], grid_box: tuple[int, int, int, int], f: int):
    """The slice of the grid box (gy0, gy1, gx0, gx1) whose probabilities the tile at ``corner`` gives
    (None when it is not a chain tile or owns nothing there)."""
    (own_y, own_x), (ty, tx) = owners, corner
    if ty not in own_y or tx not in own_x:
        return None
    gy0, gy1, gx0, gx1 = grid_box
    (ly0, ly1), (lx0, lx1) = own_y[ty], own_x[tx]
    sy0, sy1 = max(ly0 // f, gy0), min(ly1 // f, gy1)
    sx0, sx1 = max(lx0 // f, gx0), min(lx1 // f, gx1)
    if sy0 >= sy1 or sx0 >= sx1:
        return None
    return np.s_[:, sy0 - gy0 : sy1 - gy0, sx0 - gx0 : sx1 - gx0]


def _blend(
    probs: np.ndarray, maps: np.ndarray, corners: Sequence[tuple[int, int]], box: tuple[int, int, int, int],
    tile: int, owners: Owners, f: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Blend tile results into the box (y0, y1, x0, x1) on a grid of step ``f`` pixels.

    probs : (N, T) probabilities of the T output classes; maps : (N, T, h, w) ReLU'd maps.
    Tile corners and the box's top-left are multiples of ``f``; ``tile`` too.  ``owners``
    (:func:`_owners`): the chain tiles and the pixels each gives its probabilities to.
    Returns heat (the window-weighted mean of all tiles) and prob (each cell: its chain tile's
    probabilities), (T, ceil((y1-y0)/f), ceil((x1-x0)/f)) float32 tensors on the grid.
    """
    import torch
    import torch.nn.functional as F

    y0, y1, x0, x1 = box
    ct = tile // f
    gy0, gx0, gy1, gx1 = y0 // f, x0 // f, -(-y1 // f), -(-x1 // f)
    N, T = probs.shape
    heat = torch.zeros((T, gy1 - gy0, gx1 - gx0))
    prob = torch.zeros_like(heat)
    weight = torch.zeros((gy1 - gy0, gx1 - gx0))
    window = torch.from_numpy(blend_window(ct))
    p = torch.from_numpy(probs).float()
    normed = _normalised_maps(probs, maps)
    for start in range(0, N, 256):  # upsample in batches: bounded memory, one call per batch
        up = F.interpolate(normed[start : start + 256], size=(ct, ct), mode="bilinear", align_corners=False)
        for k, (ty, tx) in enumerate(corners[start : start + 256]):
            n, cy, cx = start + k, ty // f, tx // f
            # the part of this tile inside the box, in tile and grid coordinates
            sy0, sy1 = max(cy, gy0), min(cy + ct, gy1)
            sx0, sx1 = max(cx, gx0), min(cx + ct, gx1)
            if sy0 >= sy1 or sx0 >= sx1:
                continue
            w = window[sy0 - cy : sy1 - cy, sx0 - cx : sx1 - cx]
            out = np.s_[sy0 - gy0 : sy1 - gy0, sx0 - gx0 : sx1 - gx0]
            heat[(slice(None), *out)].addcmul_(up[k, :, sy0 - cy : sy1 - cy, sx0 - cx : sx1 - cx], w)
            weight[out].add_(w)
            owned = _owned_cells(owners, (ty, tx), (gy0, gy1, gx0, gx1), f)
            if owned is not None:
                prob[owned] = p[n].view(-1, 1, 1)
    weight.clamp_(min=1e-12)
    return heat.div_(weight).clamp_(0, 1), prob


def _to_pixels(grid: "torch.Tensor", f: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """(T, gh, gw) blended grid -> (T, gh*f, gw*f) float32 pixels (bilinear), or only their top-left
    ``size`` (H, W): the grid is cut to the cells those pixels read first (one more than they cover;
    the same values, without upsampling the padding of a tile larger than the image)."""
    from ..preprocess import resize_maps

    if size is not None:
        gh, gw = (min(n, -(-s // f) + 1) for n, s in zip(grid.shape[-2:], size))
        grid = grid[:, :gh, :gw]
    if f == 1:
        out = grid.numpy()
    else:
        out = resize_maps(grid, (grid.shape[-2] * f, grid.shape[-1] * f)).numpy()
    return out if size is None else out[:, : size[0], : size[1]]


def _padded_shape(H: int, W: int, tile: int, f: int) -> tuple[int, int]:
    """Image size after edge padding: at least one tile, and (size - tile) a multiple of f."""
    return tuple(tile + -(-max(0, n - tile) // f) * f for n in (H, W))  # type: ignore[return-value]


def _pad(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Edge-pad the bottom and right of a numpy or dask image to ``shape``."""
    ph, pw = shape[0] - img.shape[0], shape[1] - img.shape[1]
    if not (ph or pw):
        return img
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (img.ndim - 2)
    if isinstance(img, np.ndarray):
        return np.pad(img, pad, mode="edge")
    import dask.array as da

    return da.pad(img, pad, mode="edge")


def _fullconv(bundle: "ModelBundle", img: np.ndarray, plan: _Plan, topk: int | None) -> TiledHeatmaps:
    """Fully convolutional CAM over the whole image (see module docstring)."""
    import torch
    import torch.nn.functional as F

    from ..preprocess import resize_maps, to_channels, to_unit

    c = bundle.config
    H, W = img.shape[:2]
    scale = c.input_size / plan.tile
    h2, w2 = max(c.input_size, round(H * scale)), max(c.input_size, round(W * scale))
    if h2 * w2 > FULLCONV_MAX_PIXELS:
        raise GradCamError(f"The image is too large for the fully convolutional mode ({h2} x {w2} network pixels); use tiles.")
    chans = torch.from_numpy(to_channels(to_unit(img, plan.vrange), c.in_channels))[None]
    x = F.interpolate(chans, size=(h2, w2), mode="bilinear", align_corners=False, antialias=scale < 1)
    x = (x - torch.tensor(c.mean).view(1, -1, 1, 1)) / torch.tensor(c.std).view(1, -1, 1, 1)
    cams, logits = local_logits(bundle, x.to(bundle.device))
    check_logits(bundle, logits, None, what="the whole image (fully convolutional)")
    check_maps(bundle, cams, "cam", None)
    fh, fw = cams.shape[-2:]
    k = max(1, round(c.input_size * fh / h2))  # a tile's size in feature cells
    pad = k // 2
    win_logits = F.avg_pool2d(logits, k, stride=1, padding=pad, count_include_pad=False)[..., :fh, :fw]
    p = torch.softmax(win_logits, dim=1)[0]
    pos = torch.relu(cams)[0]
    local_max = F.max_pool2d(pos[None], k, stride=1, padding=pad)[0, :, :fh, :fw]
    heat = torch.where(local_max > 0, pos / local_max.clamp_min(1e-12), torch.zeros_like(pos)) * p
    targets = plan.targets
    if topk is not None:
        targets = [int(i) for i in torch.argsort(p.mean(dim=(1, 2)), descending=True)[:topk]]
    heat_full = resize_maps(heat[targets].cpu(), (H, W)).clamp_(0, 1).numpy()
    prob_full = resize_maps(p[targets].cpu(), (H, W)).numpy()
    stride_px = max(1, round(h2 / fh / scale))
    return TiledHeatmaps(heat_full, prob_full, [bundle.classes[i] for i in targets], targets, 1, plan.tile,
                         stride_px, "cam", "fullconv", {"feature_shape": (fh, fw), "window_cells": k})


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


def _check_cost(bundle: "ModelBundle", mode: str, shape: tuple[int, ...], itemsize: int, tile: int, stride: int,
                batch_size: int, n_targets: int, lazy: bool, chunk: int) -> None:
    """Refuse a run that cannot fit and note one with far too many tiles (see :mod:`.budget`), before
    the image is read or a tile runs."""
    H, W = shape[:2]
    if mode == "fullconv":
        S = bundle.input_size
        h2, w2 = max(S, round(H * S / tile)), max(S, round(W * S / tile))
        check_fullconv(bundle, h2, w2, n_targets, (H, W))
        return
    cost = tiling_cost(bundle, shape, itemsize, tile, stride, batch_size, n_targets, lazy, chunk,
                       f=blend_factor(tile, stride))
    check_tiling(cost, shape, tile, stride, batch_size, bundle.input_size)


def iter_tiled_heatmaps(
    bundle: "ModelBundle",
    image,
    tile: int | None = None,
    overlap: float = 0.5,
    classes=None,
    method: str = "cam",
    batch_size: int = 16,
    mode: str = "tiles",
    value_range_: tuple[float, float] | None = None,
    chunk: int = 2048,
    layer=None,
    force: bool = False,
    max_minutes: float | None = None,
) -> Generator[Progress, None, TiledHeatmaps]:
    """Tiled heatmaps as a generator: yields (tiles done, tiles total), returns TiledHeatmaps.

    Parameters
    ----------
    image : (H, W) or (H, W, 3|4) numpy, dask or zarr array, any real dtype.  A dask input, or an
        image whose results would not fit in memory (more than ``preprocess.MAX_PIXELS`` pixels or
        ``IN_MEMORY_BYTES`` of maps), is processed lazily: the result holds dask arrays, computed
        chunk by chunk on demand.
    tile : tile size in image pixels (default: :func:`default_tile`, the scale the model was trained
        at). Tiles are resized to the input size when they differ.
    overlap : fraction of a tile shared with its neighbour, in [0, 0.95].
    classes : None or "all" (every class), an int k (the k classes of highest mean probability),
        or a list of class names / indices.
    method : any CAM-family method of ``list_methods()`` (maps ReLU'd), at ``layer``.
    batch_size : tiles per forward pass (bounds memory).
    mode : "tiles" or "fullconv" (CAM only; see module docstring).
    value_range_ : intensity range for scaling to [0, 1] (default: the image's finite min/max,
        computed once over the whole image, so every tile is scaled alike; for a lazy image that is
        one streaming pass over it, block by block, which giving the range skips).
    chunk : output chunk size for dask inputs.
    layer : the layer(s) the method explains (as in :func:`explain`); default the method's own or the
        model's target layer.
    force : run even when the plan's estimated time (one tile measured, times the tile count) exceeds
        ``max_minutes``; otherwise such a plan raises ``TimeBudgetError`` before any work.
    max_minutes : the time budget in minutes (default ``engine.budget.TIME_BUDGET_MINUTES``, 10; 0: none).
    """
    check_bundle(bundle, "tiled_heatmaps")
    spec = get_method(method)
    method = spec.name
    layers = resolve_layers(bundle, spec, layer)
    image = _as_array_like(image)  # numpy stays numpy; dask, zarr... stay unloaded
    shape, dtype = _check_large_image(image)
    H, W = shape[:2]
    is_dask = _is_lazy(image)
    tile, stride, batch_size, chunk = _check_arguments(bundle, tile, overlap, batch_size, chunk, mode)
    targets, topk = _resolve_classes(bundle, classes, lazy=is_dask)
    # results too large for memory are computed lazily, chunk by chunk (never an out-of-memory crash)
    too_big = H * W > MAX_PIXELS or 2 * 4 * len(targets) * H * W > IN_MEMORY_BYTES
    if mode == "fullconv":
        _check_fullconv(bundle, method, tile, (H, W), too_big)
    elif not is_dask and too_big:
        image, is_dask = _as_lazy(image, shape, max(int(chunk), tile), topk), True
    _check_cost(bundle, mode, shape, dtype.itemsize, tile, stride, batch_size, len(targets),
                is_dask and not (H <= chunk and W <= chunk), chunk)
    if mode == "tiles":  # the value-range pass and the tiles run now (a lazy result's tiles run on demand)
        check_time(bundle, spec, layers, targets, shape, tile, stride, batch_size, max_minutes,
                   check_bool(force, "force"), scan=image if is_dask and value_range_ is None else None,
                   lazy=is_dask and not (H <= chunk and W <= chunk))
    if not is_dask and not isinstance(image, np.ndarray):
        image = np.asarray(image)  # a small zarr / h5py array
    plan = _Plan(tile, stride, method, layers, targets, _intensity_range(image, is_dask, value_range_), batch_size)

    if mode == "fullconv":
        yield (0, 1)
        result = _fullconv(bundle, np.asarray(image), plan, topk)
        yield (1, 1)
        return result
    if is_dask and (H <= chunk and W <= chunk):
        image, is_dask = np.asarray(image), False
    if is_dask:
        return _lazy(bundle, image, plan, chunk)
    return (yield from _in_memory(bundle, image, plan, topk))


def _check_fullconv(bundle: "ModelBundle", method: str, tile: int, size: tuple[int, int], too_big: bool) -> None:
    """Refuse, in one sentence, what the fully convolutional mode cannot do: a method other than CAM, an
    image too large for the whole image's activations."""
    if method != "cam":
        raise GradCamError("The fully convolutional mode computes CAM only; use mode 'tiles' for Grad-CAM.")
    (H, W), S = size, bundle.input_size
    if too_big or max(S, round(H * S / tile)) * max(S, round(W * S / tile)) > FULLCONV_MAX_PIXELS:
        raise GradCamError(f"An image of {H} x {W} pixels is too large for the fully convolutional mode; "
                           "use mode 'tiles', which processes it chunk by chunk.")


def _as_lazy(image, shape: tuple[int, ...], step: int, topk: int | None):
    """An image whose maps would not fit in memory as a dask array of (step, step) blocks, read on demand."""
    H, W = shape[:2]
    if topk is not None:
        raise GradCamError(f"An image of {H} x {W} pixels is processed lazily (chunk by chunk); name the classes "
                           "or use all, since top-k needs the whole image first.")
    import dask.array as da

    # name=False: no hashing of the data; _Window: from_array would copy a numpy array whole
    return da.from_array(_Window(image), chunks=(step, step) + tuple(shape[2:]), name=False)


def _intensity_range(image, lazy: bool, given) -> tuple[float, float]:
    """The range scaled to [0, 1]: ``given`` (checked), else the image's finite min/max (RGB channels only;
    one streaming pass for a lazy image)."""
    if given is None:
        return _lazy_value_range(image) if lazy else value_range(image[..., :3] if image.ndim == 3 else image)
    vrange = (float(given[0]), float(given[1]))
    if not (np.isfinite(vrange[0]) and np.isfinite(vrange[1]) and vrange[0] < vrange[1]):
        raise GradCamError(f"value_range_ must be two finite numbers, low < high, not {tuple(given)}.")
    return vrange


def _with_total(runner: Generator, total: int):
    """Yield (done, total) for each count ``runner`` yields; return what it returns."""
    while True:
        try:
            done = next(runner)
        except StopIteration as stop:
            return stop.value
        yield (done, total)


def _in_memory(bundle: "ModelBundle", image: np.ndarray, plan: _Plan,
               topk: int | None) -> Generator[Progress, None, TiledHeatmaps]:
    """Mode "tiles" on a numpy image: every tile of the padded image, then one blend of all of them."""
    H, W = image.shape[:2]
    tile, stride, targets = plan.tile, plan.stride, plan.targets
    f = blend_factor(tile, stride)
    padded = _pad(image, _padded_shape(H, W, tile, f))
    Hp, Wp = padded.shape[:2]
    corners = [(y, x) for y in tile_starts(Hp, tile, stride) for x in tile_starts(Wp, tile, stride)]
    yield (0, len(corners))
    probs, maps = yield from _with_total(_run_tiles(bundle, padded, (0, 0), corners, plan), len(corners))
    columns = list(range(len(targets)))
    if topk is not None:
        columns = [int(i) for i in np.argsort(-probs.mean(axis=0), kind="stable")[:topk]]
        targets = [targets[i] for i in columns]
    owners = _owners(Hp, Wp, tile, stride, f)
    heat, prob = _blend(probs[:, targets], maps[:, columns], corners, (0, Hp, 0, Wp), tile, owners, f)
    return TiledHeatmaps(_to_pixels(heat, f, (H, W)), _to_pixels(prob, f, (H, W)),
                         [bundle.classes[i] for i in targets], targets, len(corners), tile, stride, plan.method,
                         "tiles", {"blend_step": f})


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
    extra_axes = (0,) * (src.ndim - 2)  # the channel axis is one block

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

    # The graph is written out directly (one task per tile group, one per output chunk), with named
    # keys: building it costs microseconds per chunk, where dask.delayed would hash (pickle) the model
    # and re-optimise the input graph for every task (minutes for a 100k x 100k image).
    from dask.highlevelgraph import HighLevelGraph

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
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[src])
    chunks = ((2 * T,), tuple(min(chunk, Hp - y) for y in y_edges), tuple(min(chunk, Wp - x) for x in x_edges))
    both = da.Array(graph, name, chunks, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))[:, :H, :W]
    n_tiles = len(ys) * len(xs)
    return TiledHeatmaps(both[:T], both[T:], [bundle.classes[i] for i in plan.targets], list(plan.targets), n_tiles,
                         tile, plan.stride, plan.method, "tiles", {"chunk": chunk, "blend_step": f})


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


def _cat(*tensors):
    """torch.cat of (T, h, w) grids along the first axis."""
    import torch

    return torch.cat(tensors)


def tiled_heatmaps(bundle: "ModelBundle", image, tile: int | None = None, overlap: float = 0.5, classes=None,
                   method: str = "cam", **kwargs) -> TiledHeatmaps:
    """Per-class heatmaps covering a whole (large) image; see :func:`iter_tiled_heatmaps`.

    Returns
    -------
    TiledHeatmaps with ``heatmaps`` (C, H, W) float32 in [0, 1], ``classes``, ``breakdown``
    {class: share of the area where it dominates, summing to 1} and ``probabilities``
    {class: mean probability}.
    """
    return run_to_end(iter_tiled_heatmaps(bundle, image, tile, overlap, classes, method, **kwargs))

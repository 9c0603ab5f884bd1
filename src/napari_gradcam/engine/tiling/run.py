"""The entry points: :func:`iter_tiled_heatmaps` (a generator of progress) and :func:`tiled_heatmaps`;
the in-memory path (every tile, one blend); the lazy and fully convolutional paths live beside it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Generator

import numpy as np

from ...errors import GradCamError
from ...generators import run_to_end
from ...preprocess import MAX_PIXELS, _as_array_like, value_range
from ...validate import check_bool, check_bundle
from ..layer_choice import resolve_layers
from ..methods import get_method
from ..result import TiledHeatmaps
from .blend import _blend, _pad, _to_pixels
from .budget import check_fullconv, check_tiling, check_time, tiling_cost
from .fullconv import _check_fullconv, _fullconv
from .lazy import _as_lazy, _is_lazy, _lazy, _lazy_value_range
from .network import _run_tiles
from .plan import (
    Progress, _check_arguments, _check_large_image, _owners, _padded_shape, _Plan, _resolve_classes, blend_factor,
    tile_starts,
)

if TYPE_CHECKING:  # pragma: no cover
    from ...bundle import ModelBundle

IN_MEMORY_BYTES = 4 << 30  # numpy results (heatmaps + probability maps) larger than this are computed lazily


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
    max_minutes : the time budget in minutes (default ``engine.tiling.budget.TIME_BUDGET_MINUTES``, 10; 0: none).
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
    return (yield from _run_plan(bundle, image, plan, topk, mode, is_dask, chunk))


def _run_plan(bundle: "ModelBundle", image, plan: _Plan, topk, mode: str, is_dask: bool,
              chunk: int) -> Generator[Progress, None, TiledHeatmaps]:
    """Run a checked plan: one full-convolution pass, a lazy (dask) result whose tiles run on demand, or
    every tile now (yielding progress).  A lazy image no larger than one chunk is loaded and run now."""
    H, W = image.shape[:2]
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

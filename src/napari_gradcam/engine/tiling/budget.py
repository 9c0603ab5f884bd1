"""What a tiled run will cost, known before the first tile runs.

:func:`tiling_cost` counts the tiles and estimates the peak memory of a run from the image's size and
dtype, the tile, stride, batch size, the classes and the size of the model's maps (one forward pass of
a blank input); :func:`check_tiling` refuses a run whose estimate exceeds the memory available
(:class:`~napari_gradcam.errors.ResourceError`, one sentence saying what dominates and what to change)
and warns (:class:`~napari_gradcam.errors.GradCamWarning`) when the tile count is far beyond what the
image needs, offering the fully convolutional mode.

:func:`check_time` refuses (:class:`~napari_gradcam.errors.TimeBudgetError`) a plan whose time, estimated
from one measured tile, exceeds a budget (:data:`TIME_BUDGET_MINUTES` by default), unless forced.

The estimate is deliberately generous (the model's own activations are taken as
``ACTIVATION_MAPS`` float maps of the input size per image): refusing a run that would have fitted
costs a sentence, starting one that cannot fit costs the machine.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import GradCamError, GradCamWarning, ResourceError, TimeBudgetError
from ...resources import available_memory, format_bytes

if TYPE_CHECKING:  # pragma: no cover
    from ...bundle import ModelBundle

#: The model's activations per image, in float32 maps of the network's input size (generous).
ACTIVATION_MAPS = 64
#: A run may plan to use at most this share of the memory available.
MEMORY_SHARE = 0.8
#: Tiles per needed tile above which the count is "far beyond the image's needs": the image needs the
#: tiles of the network's input size at 50% overlap (the default run: ratio 1); tiles 8 times smaller
#: than the input at the same overlap give 64.
WORK_RATIO_WARNING = 64.0
#: dask runs this many tasks at once (at most) in the lazy path.
LAZY_PARALLEL = 4
#: Allocator slack and the libraries' working buffers, whatever the run.
OVERHEAD = 32 << 20
#: A tiled run estimated to take longer than this is refused unless forced (``max_minutes`` overrides it).
TIME_BUDGET_MINUTES = 10.0
#: Plans of at most this many tiles are never timed (they cannot take long enough to matter).
UNTIMED_TILES = 64
#: A value-range pass over a lazy image estimated to take longer than this is announced before it starts.
SCAN_NOTE_SECONDS = 30.0


@dataclass(frozen=True)
class TilingCost:
    """The tiles and peak memory of one planned run.

    tiles : tiles the run processes; needed : tiles of the network's input size at 50% overlap that cover
    the image (what it needs); work_ratio : tiles / needed; peak_bytes : estimated peak memory;
    parts : the estimate's terms by name (bytes).
    """

    tiles: int
    work_ratio: float
    peak_bytes: int
    parts: dict[str, int]
    needed: int = 1

    @property
    def dominant(self) -> str:
        return max(self.parts, key=self.parts.get)


def map_cells(bundle: "ModelBundle") -> int:
    """h * w of the model's target-layer map for one input (one forward pass of a blank image)."""
    import torch

    from ..hooks import StopForward, capture

    x = torch.zeros((1, bundle.in_channels, bundle.input_size, bundle.input_size), device=bundle.device)
    was = bundle.model.training
    bundle.model.eval()
    try:
        with torch.inference_mode(), capture(bundle.model, bundle.target_layer, stop=True) as box:
            try:
                bundle.model(x)
            except StopForward:
                pass
    except Exception:  # noqa: BLE001 - an estimate only: assume maps as fine as the input
        return bundle.input_size ** 2
    finally:
        bundle.model.train(was)
    a = box.activation
    return int(a.shape[-2] * a.shape[-1]) if a is not None else bundle.input_size ** 2


def _starts(length: int, tile: int, stride: int) -> int:
    """How many tile positions cover ``length`` (``tiling.tile_starts``, counted)."""
    from .plan import tile_starts

    return len(tile_starts(length, tile, stride))


def tiling_cost(bundle: "ModelBundle", shape: tuple[int, ...], itemsize: int, tile: int, stride: int,
                batch_size: int, n_targets: int, lazy: bool = False, chunk: int = 2048,
                cells: int | None = None, f: int = 1) -> TilingCost:
    """Tile count and peak memory of a tiled run (see the module docstring).

    shape : the image's (H, W[, C]); itemsize : bytes per value; n_targets : maps kept per tile;
    cells : h * w of a tile's map (default: measured with :func:`map_cells`); f : the blending grid's step.
    """
    H, W = int(shape[0]), int(shape[1])
    ch = int(shape[2]) if len(shape) > 2 else 1
    S, K, B = bundle.input_size, bundle.n_classes, int(batch_size)
    cells = map_cells(bundle) if cells is None else cells
    Hp, Wp = max(H, tile), max(W, tile)
    tiles = _starts(Hp, tile, stride) * _starts(Wp, tile, stride)
    work = 8 if itemsize >= 8 else 4  # to_unit scales float64 images in float64
    per_tile = 4 * (K + n_targets * cells) * 3  # probabilities and maps, concatenated, normalised for blending
    batch = min(B, tiles) * (tile * tile * (work + 4 * (bundle.in_channels + 1))
                             + S * S * 4 * (2 * bundle.in_channels + ACTIVATION_MAPS))
    if lazy:
        c = max(chunk, tile)
        group = min(tiles, _starts(c + tile, tile, stride) ** 2)
        parts = {
            "the tiles": LAZY_PARALLEL * batch,
            "the per-tile maps": LAZY_PARALLEL * 9 * group * per_tile,  # a chunk blends its 9 neighbour groups
            "the image regions": LAZY_PARALLEL * (c + tile) ** 2 * ch * itemsize * 2,
            "the output chunks": LAZY_PARALLEL * 2 * n_targets * (c + 2 * 64) ** 2 * 4 * 2,
        }
    else:
        parts = {
            "the tiles": batch,
            "the per-tile maps": tiles * per_tile,
            "the padded image": Hp * Wp * ch * itemsize if (Hp, Wp) != (H, W) else 0,
            # the blending grid (heat, probabilities, weights at step f), then heat and probabilities in pixels
            "the output maps": 3 * n_targets * -(-Hp // f) * -(-Wp // f) * 4 + 2 * n_targets * (H + f) * (W + f) * 4 * 2,
        }
    needed = _starts(max(H, S), S, max(1, S // 2)) * _starts(max(W, S), S, max(1, S // 2))
    return TilingCost(tiles, tiles / needed, int(sum(parts.values())) + OVERHEAD, parts, needed)


def check_tiling(cost: TilingCost, shape: tuple[int, ...], tile: int, stride: int, batch_size: int,
                 input_size: int) -> None:
    """Refuse a run that cannot fit (ResourceError); warn when its tiles are mostly padding (far more
    tiles than needed is noted by :func:`check_time`, once the plan is not refused for its time)."""
    H, W = int(shape[0]), int(shape[1])
    budget = MEMORY_SHARE * available_memory()
    if cost.peak_bytes > budget:
        advice = {
            "the tiles": f"use smaller tiles (now {tile} px) or a smaller batch size (now {batch_size})",
            "the per-tile maps": f"use fewer tiles: a larger tile (now {tile} px) or less overlap (stride now {stride} px)",
            "the padded image": f"use a tile no larger than the image (now {tile} px)",
            "the output maps": "pass the image as a dask array to compute the maps lazily, or fewer classes",
            "the image regions": "use smaller tiles",
            "the output chunks": "use fewer classes",
        }[cost.dominant]
        raise ResourceError(
            f"Tiled heatmaps of a {H} x {W} image ({cost.tiles:,} tiles of {tile} px) need about "
            f"{format_bytes(cost.peak_bytes)} of memory, mostly {cost.dominant}, but {format_bytes(budget)} "
            f"can be used; {advice}.")
    if tile > 2 * max(H, W, input_size):
        warnings.warn(
            f"Tiles of {tile} px on a {H} x {W} image are mostly edge padding; a tile of at most "
            f"{max(H, W, input_size)} px covers the image with less padding and memory.", GradCamWarning, stacklevel=4)


def _note_work_ratio(tiles: int, hw: tuple[int, int], tile: int, stride: int, input_size: int) -> None:
    """Warn (GradCamWarning) when a plan makes far more tiles than the image needs (:data:`WORK_RATIO_WARNING`)."""
    H, W = hw
    S = input_size
    needed = _starts(max(H, S), S, max(1, S // 2)) * _starts(max(W, S), S, max(1, S // 2))
    if tiles / needed > WORK_RATIO_WARNING:
        warnings.warn(
            f"{tiles:,} tiles of {tile} px (stride {stride} px) for a {H} x {W} image, {tiles / needed:,.0f} "
            f"times the {needed:,} tiles of the network's {S} px input that cover it; a larger tile or "
            "less overlap, or mode='fullconv' (one pass over the whole image, CAM), does the job in a fraction of "
            "the time.",
            GradCamWarning, stacklevel=4)


def check_result_fits(hw: tuple[int, int], n_classes: int, copies: int = 2) -> None:
    """Refuse (ResourceError) when ``copies`` float32 (n_classes, H, W) maps do not fit in memory
    (the command line holds the heatmaps and the probability maps whole to write them)."""
    H, W = int(hw[0]), int(hw[1])
    need = copies * n_classes * H * W * 4
    budget = MEMORY_SHARE * available_memory()
    if need > budget:
        raise ResourceError(
            f"The heatmaps of a {H} x {W} image for {n_classes} class(es) take {format_bytes(need)}, but "
            f"{format_bytes(budget)} can be used; compute them lazily with the Python API "
            "(tiled_heatmaps on a dask array, then TiledHeatmaps.to_zarr), or name fewer classes.")


def fullconv_bytes(bundle: "ModelBundle", h2: int, w2: int, n_targets: int, hw: tuple[int, int]) -> int:
    """Peak memory of the fully convolutional mode on an (h2, w2) network image."""
    return int(h2 * w2 * 4 * (bundle.in_channels * 3 + ACTIVATION_MAPS) + 4 * n_targets * hw[0] * hw[1] * 2 * 2)


def check_fullconv(bundle: "ModelBundle", h2: int, w2: int, n_targets: int, hw: tuple[int, int]) -> None:
    need = fullconv_bytes(bundle, h2, w2, n_targets, hw)
    budget = MEMORY_SHARE * available_memory()
    if need > budget:
        raise ResourceError(
            f"The fully convolutional mode on a {hw[0]} x {hw[1]} image ({h2} x {w2} network pixels) needs about "
            f"{format_bytes(need)} of memory, but {format_bytes(budget)} can be used; use mode 'tiles'.")


def format_duration(seconds: float) -> str:
    """'11.5 h', '25 min', '40 s' (one unit, rounded)."""
    if seconds >= 3600:
        return f"{seconds / 3600:,.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{max(seconds, 1):.0f} s"


def seconds_per_tile(bundle: "ModelBundle", method, layers, targets, batch_size: int) -> float:
    """Seconds one tile takes with ``method`` (an engine method object with ``compute``), measured on a
    blank input: one tile first (it also pays the first call's set-up, so it is an upper bound), then,
    only if that tile alone makes the plan look long, a batch of up to 8 tiles for the per-tile rate."""
    import torch

    S, C = bundle.input_size, bundle.in_channels
    was = bundle.model.training
    bundle.model.eval()

    def timed(n: int) -> float:
        x = torch.zeros((n, C, S, S), device=bundle.device)
        start = time.perf_counter()
        method.compute(bundle, x, list(targets), layers)
        if bundle.device.type == "cuda":
            torch.cuda.synchronize(bundle.device)
        return (time.perf_counter() - start) / n

    try:
        first = timed(1)
        n = min(int(batch_size), 8)
        return first if n <= 1 else min(first, timed(n))
    except GradCamError:  # a method that refuses a blank input: the run itself will say what it says
        return 0.0
    finally:
        bundle.model.train(was)


def check_time(bundle: "ModelBundle", method, layers, targets, shape: tuple[int, ...], tile: int, stride: int,
               batch_size: int, max_minutes: float | None = None, force: bool = False,
               scan=None, lazy: bool = False) -> float | None:
    """Refuse (TimeBudgetError, one sentence naming the estimate) a tiled run of an image of ``shape``
    whose time exceeds ``max_minutes`` (default :data:`TIME_BUDGET_MINUTES`; 0 or ``force=True``: no
    limit), before any of it runs.  The estimate is the tile count times one measured tile
    (:func:`seconds_per_tile`; left out when ``lazy``: a lazy result computes its chunks on demand), plus
    one pass over ``scan`` (a lazy image whose value range is read first:
    :func:`~napari_gradcam.preprocess.seconds_to_scan`).  A scan of more than :data:`SCAN_NOTE_SECONDS`
    that is allowed to run is announced (GradCamWarning) with its estimate.  Returns the estimate in
    seconds, or None when nothing was timed (forced, no limit, or a small plan and no scan)."""
    from ...validate import check_number

    minutes = TIME_BUDGET_MINUTES if max_minutes is None else check_number(max_minutes, "max_minutes", 0)
    H, W = int(shape[0]), int(shape[1])
    tiles = _starts(max(H, tile), tile, stride) * _starts(max(W, tile), tile, stride)
    timed_tiles = 0 if lazy or tiles <= UNTIMED_TILES else tiles
    estimate = scan_s = None
    if not (force or minutes == 0) and (timed_tiles or scan is not None):
        scan_s = _scan_seconds(scan)
        per_tile = seconds_per_tile(bundle, method, layers, targets, batch_size) if timed_tiles else 0.0
        estimate = scan_s + timed_tiles * per_tile
    if estimate is None or estimate <= 60.0 * minutes or not math.isfinite(estimate):
        _note_work_ratio(tiles, (H, W), tile, stride, bundle.input_size)
        scan_s = _scan_seconds(scan) if scan_s is None and scan is not None else scan_s
        if scan_s is not None and scan_s > SCAN_NOTE_SECONDS:
            warnings.warn(f"Reading the value range of the {H} x {W} image first takes about {format_duration(scan_s)} "
                          "(one pass over its blocks); give value_range_ to skip it.", GradCamWarning, stacklevel=4)
        return estimate
    budget = 60.0 * minutes
    read = f", {format_duration(scan_s)} of it reading the image's value range" if scan_s >= 1 else ""
    what = f"({tiles:,} tiles of {tile} px)" if timed_tiles else f"({tiles:,} tiles of {tile} px, computed on demand)"
    summary = (f"Tiled heatmaps of a {H} x {W} image {what} would take about {format_duration(estimate)} "
               f"(measured on {'one tile' if timed_tiles else 'one block'}{read}), beyond the budget of "
               f"{format_duration(budget)}")
    raise TimeBudgetError(
        f"{summary}; use larger tiles or less overlap, or pass force=True (or a larger max_minutes) to run it "
        "anyway.", seconds=estimate, budget_seconds=budget, tiles=tiles, summary=summary)


def check_whole_run(bundle: "ModelBundle", image, tile: int | None, overlap: float, method: str,
                    batch_size: int, max_minutes: float | None = None) -> float | None:
    """:func:`check_time` for computing every tile of a lazy image's heatmaps now (the command line
    writes them all), the value-range pass included, before anything is read but one block.  Arguments
    as :func:`~napari_gradcam.engine.tiling.iter_tiled_heatmaps` takes them (out-of-range ones are left
    to its own sentences); the cost of every class is counted."""
    from ..layer_choice import resolve_layers
    from ..methods import get_method
    from .plan import default_tile

    tile = default_tile(bundle) if tile is None else int(tile)
    if not (8 <= tile and 0 <= float(overlap) <= 0.95):
        return None
    spec = get_method(method)
    stride = max(1, int(round(tile * (1 - float(overlap)))))
    return check_time(bundle, spec, resolve_layers(bundle, spec, None), list(range(bundle.n_classes)),
                      tuple(image.shape), tile, stride, batch_size, max_minutes, scan=image)


def _scan_seconds(scan) -> float:
    from ...preprocess import seconds_to_scan

    return seconds_to_scan(scan) if scan is not None else 0.0


__all__ = ["TilingCost", "tiling_cost", "check_tiling", "check_result_fits", "map_cells", "check_fullconv",
           "check_time", "check_whole_run", "seconds_per_tile", "format_duration", "TIME_BUDGET_MINUTES"]

"""Multi-class heatmaps over images larger than the network input.

The package by step: :mod:`.plan` (the tile grid, chains, blending step, checked arguments),
:mod:`.budget` (what a run will cost, refused up front when it cannot fit), :mod:`.network` (the
network over batches of tiles), :mod:`.blend` (tile results into one map), :mod:`.run` (the entry
points and the in-memory path), :mod:`.lazy` (dask: images too large for memory) and
:mod:`.fullconv` (CAM once over the whole image).

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

from .blend import WINDOW_FLOOR, blend_window
from .plan import MAX_TILE, blend_factor, chain_ownership, chain_starts, default_tile, tile_starts
from .run import iter_tiled_heatmaps, tiled_heatmaps

__all__ = ["MAX_TILE", "WINDOW_FLOOR", "blend_factor", "blend_window", "chain_ownership", "chain_starts",
           "default_tile", "iter_tiled_heatmaps", "tile_starts", "tiled_heatmaps"]

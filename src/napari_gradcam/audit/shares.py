"""Where the evidence lies: shares of a map's total in the image's outer frame, in the cells of a coarse
grid, and outside a mask.  Maps here are on the audit's common grid, (N, G, G) float32, each summing to 1
(an all-zero map sums to 0 and has every share 0)."""

from __future__ import annotations

import numpy as np


def normalise_sum(maps: np.ndarray) -> np.ndarray:
    """(N, G, G) non-negative maps divided by their sums (all-zero maps stay zero); float32."""
    maps = np.clip(np.asarray(maps, dtype=np.float32), 0, None)
    total = maps.sum(axis=(-2, -1), keepdims=True)
    return np.divide(maps, total, out=np.zeros_like(maps), where=total > 0)


def frame_mask(grid: int, width: float = 0.1) -> np.ndarray:
    """(G, G) bool: the outer frame, ``width`` of the side on each edge (at least one cell)."""
    k = max(1, int(round(width * grid)))
    inner = np.zeros((grid, grid), dtype=bool)
    inner[k:grid - k, k:grid - k] = True
    return ~inner


def _no_evidence(maps: np.ndarray) -> np.ndarray:
    """(N,) True where a map is empty (no evidence anywhere): its shares are NaN, not 0."""
    return ~(maps.sum(axis=(-2, -1)) > 0)


def frame_share(maps: np.ndarray, width: float = 0.1) -> np.ndarray:
    """(N,) share of each map in the outer frame of the image (``width``: the frame's share of the side);
    NaN for an empty map."""
    share = (maps * frame_mask(maps.shape[-1], width)).sum(axis=(-2, -1)).astype(np.float32)
    return np.where(_no_evidence(maps), np.float32(np.nan), share)


def cell_shares(maps: np.ndarray, cells: int = 4) -> np.ndarray:
    """(N, cells, cells) share of each map in each cell of a coarse grid (row-major, top-left first; NaN for
    an empty map).  ``G`` must be a multiple of ``cells``."""
    n, g = maps.shape[0], maps.shape[-1]
    if g % cells:
        raise ValueError(f"the grid ({g}) is not a multiple of the cells ({cells})")
    k = g // cells
    shares = maps.reshape(n, cells, k, cells, k).sum(axis=(2, 4)).astype(np.float32)
    shares[_no_evidence(maps)] = np.nan
    return shares


def mask_on_grid(mask: np.ndarray, grid: int) -> np.ndarray:
    """(H, W) bool mask -> (G, G) float32: the covered fraction of each grid cell (area average)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    return F.adaptive_avg_pool2d(t, (grid, grid))[0, 0].numpy()


def outside_share(grid_map: np.ndarray, mask: np.ndarray) -> float:
    """Share of one (G, G) map outside an (H, W) bool mask (the mask taken to the grid by area); NaN for
    an empty map."""
    if _no_evidence(grid_map):
        return float("nan")
    inside = mask_on_grid(mask, grid_map.shape[-1])
    return float((grid_map * (1.0 - inside)).sum())


def evidence_box(mean_map: np.ndarray, level: float = 0.5) -> list[float]:
    """Where a (G, G) map's evidence concentrates: the bounding box of the connected region above
    ``level`` times the peak that holds the peak, as ``[y0, x0, y1, x1]`` fractions of the image."""
    from scipy import ndimage

    g = mean_map.shape[-1]
    if not np.any(mean_map > 0):
        return [0.0, 0.0, 1.0, 1.0]
    regions, _ = ndimage.label(mean_map >= level * mean_map.max())
    peak = np.unravel_index(int(np.argmax(mean_map)), mean_map.shape)
    rows, cols = np.nonzero(regions == regions[peak])
    return [float(rows.min() / g), float(cols.min() / g), float((rows.max() + 1) / g), float((cols.max() + 1) / g)]

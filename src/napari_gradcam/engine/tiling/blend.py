"""Blending tile results into one map: a smooth Hann window over the tiles' normalised maps (the heat) and
each pixel's probabilities from its chain tile (see :mod:`.plan`), on a grid of step f pixels, upsampled once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from .plan import Owners

if TYPE_CHECKING:  # pragma: no cover
    import torch

WINDOW_FLOOR = 1e-3  # the window never reaches 0, so a pixel seen by one tile at its edge stays defined


def blend_window(tile: int) -> np.ndarray:
    """(tile, tile) float32 separable Hann window, floored at WINDOW_FLOOR."""
    w1 = np.sin(np.pi * (np.arange(tile) + 0.5) / tile) ** 2
    return np.maximum(np.outer(w1, w1), WINDOW_FLOOR).astype(np.float32)


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
    from ...preprocess import resize_maps

    if size is not None:
        gh, gw = (min(n, -(-s // f) + 1) for n, s in zip(grid.shape[-2:], size))
        grid = grid[:, :gh, :gw]
    if f == 1:
        out = grid.numpy()
    else:
        out = resize_maps(grid, (grid.shape[-2] * f, grid.shape[-1] * f)).numpy()
    return out if size is None else out[:, : size[0], : size[1]]


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


def _cat(*tensors):
    """torch.cat of (T, h, w) grids along the first axis."""
    import torch

    return torch.cat(tensors)

"""Multi-class heatmaps over images larger than the network input.

Two modes:

``mode="tiles"`` (default, any method)
    Tiles of ``tile`` pixels on a regular grid with step ``stride = tile * (1 - overlap)``;
    the last row and column are shifted back so the WHOLE image is covered (an image smaller
    than a tile is edge-padded).  Tiles run through the network in batches.  Each tile
    contributes, for class c, ``p_c(tile) * map_c / max(map_c)`` (its probability times its
    normalised map), weighted by a smooth Hann window, so overlapping tiles blend without
    seams; the per-pixel result is the weighted mean.  The tile probabilities are blended
    the same way into probability maps, which give the class breakdown.
    Memory is bounded by the batch size plus the output; a dask input is processed lazily,
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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generator, Sequence

import numpy as np

from ..errors import GradCamError, ImageError
from ..preprocess import image_to_tensor, value_range
from .cam import class_activation_maps, local_logits
from .gradcam import canonical_method, gradient_maps
from .result import TiledHeatmaps

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import ModelBundle

Progress = tuple[int, int]  # (tiles done, tiles in total)
WINDOW_FLOOR = 1e-3  # the window never reaches 0, so a pixel seen by one tile at its edge stays defined
FULLCONV_MAX_PIXELS = 40_000_000


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles covering ``[0, length)``; the last one ends exactly at ``length``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


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
    targets: list[int]  # class indices whose maps are computed
    vrange: tuple[float, float]
    batch_size: int
    shape: tuple[int, int]  # padded image (H, W)


def _check_large_image(image) -> None:
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return
    if image.ndim != 2:
        raise ImageError(
            f"Tiled heatmaps need one 2D image, (H, W) or (H, W, 3|4), not shape {tuple(image.shape)}."
        )
    if 0 in image.shape:
        raise ImageError(f"The image is empty (shape {tuple(image.shape)}).")


def _resolve_classes(bundle: "ModelBundle", classes, lazy: bool) -> tuple[list[int], int | None]:
    """-> (indices to compute, top-k or None)."""
    if classes is None or (isinstance(classes, str) and classes.lower() == "all"):
        return list(range(bundle.n_classes)), None
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        k = int(classes)
        if not 1 <= k <= bundle.n_classes:
            raise GradCamError(f"Top-k needs k between 1 and {bundle.n_classes}, not {k}.")
        if lazy:
            raise GradCamError("For a lazy (dask) image, name the classes or use all; top-k needs the whole image first.")
        return list(range(bundle.n_classes)), k
    if isinstance(classes, str):
        classes = [classes]
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

    c = bundle.config
    oy, ox = origin
    probs, maps = [], []
    bundle.model.eval()
    for i in range(0, len(corners), plan.batch_size):
        batch = corners[i : i + plan.batch_size]
        x = torch.stack([
            image_to_tensor(region[y - oy : y - oy + plan.tile, x0 - ox : x0 - ox + plan.tile],
                            c.in_channels, c.input_size, c.mean, c.std, plan.vrange)
            for y, x0 in batch
        ]).to(bundle.device)
        if plan.method == "cam":
            logits, m = class_activation_maps(bundle, x)
            m = torch.relu(m[:, plan.targets])
        else:
            logits, m, _ = gradient_maps(bundle, x, plan.targets, bundle.target_layer, plan.method)
        probs.append(torch.softmax(logits, dim=1).cpu())
        maps.append(m.cpu())
        yield min(i + plan.batch_size, len(corners))
    return torch.cat(probs).numpy(), torch.cat(maps).numpy()


def _blend(
    probs: np.ndarray, maps: np.ndarray, corners: Sequence[tuple[int, int]], box: tuple[int, int, int, int], tile: int
) -> tuple[np.ndarray, np.ndarray]:
    """Blend tile results into the output box (y0, y1, x0, x1).

    probs : (N, T) probabilities of the T output classes; maps : (N, T, h, w) ReLU'd maps.
    Returns heat (T, y1-y0, x1-x0) and prob (T, ...) float32.
    """
    import torch

    from ..preprocess import resize_maps

    y0, y1, x0, x1 = box
    T = probs.shape[1]
    heat = np.zeros((T, y1 - y0, x1 - x0), np.float32)
    prob = np.zeros_like(heat)
    weight = np.zeros((y1 - y0, x1 - x0), np.float32)
    window = blend_window(tile)
    peaks = maps.max(axis=(2, 3), keepdims=True)
    normed = np.divide(maps, peaks, out=np.zeros_like(maps), where=peaks > 0) * probs[:, :, None, None]
    for n, (ty, tx) in enumerate(corners):
        # the part of this tile inside the box, in tile and box coordinates
        sy0, sy1 = max(ty, y0), min(ty + tile, y1)
        sx0, sx1 = max(tx, x0), min(tx + tile, x1)
        if sy0 >= sy1 or sx0 >= sx1:
            continue
        up = resize_maps(torch.from_numpy(normed[n]), (tile, tile)).numpy()
        w = window[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
        out = np.s_[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
        heat[(slice(None), *out)] += up[:, sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx] * w
        prob[(slice(None), *out)] += probs[n][:, None, None] * w
        weight[out] += w
    np.divide(heat, weight, out=heat, where=weight > 0)
    np.divide(prob, weight, out=prob, where=weight > 0)
    return np.clip(heat, 0, 1, out=heat), prob


def _pad_to_tile(img: np.ndarray, tile: int) -> np.ndarray:
    ph, pw = max(0, tile - img.shape[0]), max(0, tile - img.shape[1])
    if ph or pw:
        pad = [(0, ph), (0, pw)] + [(0, 0)] * (img.ndim - 2)
        img = np.pad(img, pad, mode="edge")
    return img


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
) -> Generator[Progress, None, TiledHeatmaps]:
    """Tiled heatmaps as a generator: yields (tiles done, tiles total), returns TiledHeatmaps.

    Parameters
    ----------
    image : (H, W) or (H, W, 3|4) numpy or dask array, any dtype.
    tile : tile size in image pixels (default: the model's input size). Tiles are resized to
        the input size when they differ.
    overlap : fraction of a tile shared with its neighbour, in [0, 0.95].
    classes : None or "all" (every class), an int k (the k classes of highest mean probability),
        or a list of class names / indices.
    method : "cam" | "gradcam" | "gradcam++" (Grad-CAM at the model's target layer).
    batch_size : tiles per forward pass (bounds memory).
    mode : "tiles" or "fullconv" (CAM only; see module docstring).
    value_range_ : intensity range for scaling to [0, 1] (default: the image's finite min/max,
        computed once over the whole image, so every tile is scaled alike).
    chunk : output chunk size for dask inputs.
    """
    method = canonical_method(method)
    is_dask = hasattr(image, "dask") or (hasattr(image, "compute") and not isinstance(image, np.ndarray))
    if not is_dask:
        image = np.asarray(image)
    _check_large_image(image)
    if mode not in ("tiles", "fullconv"):
        raise GradCamError(f"Unknown tiling mode {mode!r}; choose 'tiles' or 'fullconv'.")
    tile = int(tile or bundle.input_size)
    if tile < 8:
        raise GradCamError(f"Tiles must be at least 8 pixels, not {tile}.")
    if not 0 <= overlap <= 0.95:
        raise GradCamError(f"Overlap must be between 0 and 0.95, not {overlap}.")
    if batch_size < 1:
        raise GradCamError(f"batch_size must be at least 1, not {batch_size}.")
    stride = max(1, int(round(tile * (1 - overlap))))
    targets, topk = _resolve_classes(bundle, classes, lazy=is_dask)
    if value_range_ is None:
        if is_dask:
            import dask

            rgb = image[..., :3] if image.ndim == 3 else image
            lo, hi = dask.compute(rgb.min(), rgb.max())
            vrange = (float(lo), float(hi))
            if not (np.isfinite(vrange[0]) and np.isfinite(vrange[1])):
                raise ImageError("The dask image has NaN or infinite values; pass value_range_ explicitly.")
        else:
            vrange = value_range(image[..., :3] if image.ndim == 3 else image)
    else:
        vrange = (float(value_range_[0]), float(value_range_[1]))
    H, W = image.shape[:2]
    plan = _Plan(tile, stride, method, targets, vrange, batch_size, (max(H, tile), max(W, tile)))

    if mode == "fullconv":
        if method != "cam":
            raise GradCamError("The fully convolutional mode computes CAM only; use mode 'tiles' for Grad-CAM.")
        if is_dask:
            image = np.asarray(image)
        yield (0, 1)
        result = _fullconv(bundle, image, plan, topk)
        yield (1, 1)
        return result

    if is_dask and (H <= chunk and W <= chunk):
        image, is_dask = np.asarray(image), False
    if is_dask:
        return _lazy(bundle, image, plan, chunk)

    padded = _pad_to_tile(image, tile)
    corners = [(y, x) for y in tile_starts(padded.shape[0], tile, stride) for x in tile_starts(padded.shape[1], tile, stride)]
    total = len(corners)
    yield (0, total)
    runner = _run_tiles(bundle, padded, (0, 0), corners, plan)
    while True:
        try:
            done = next(runner)
        except StopIteration as stop:
            probs, maps = stop.value
            break
        yield (done, total)
    columns = list(range(len(targets)))
    if topk is not None:
        columns = [int(i) for i in np.argsort(-probs.mean(axis=0), kind="stable")[:topk]]
        targets = [targets[i] for i in columns]
    heat, prob = _blend(probs[:, targets], maps[:, columns], corners, (0, padded.shape[0], 0, padded.shape[1]), tile)
    return TiledHeatmaps(heat[:, :H, :W], prob[:, :H, :W], [bundle.classes[i] for i in targets], targets, total,
                         tile, stride, method, "tiles")


def _lazy(bundle: "ModelBundle", image, plan: _Plan, chunk: int) -> TiledHeatmaps:
    """Dask path: one task per output chunk, reading its tiles' region (chunk + up to a tile)."""
    import dask
    import dask.array as da

    H, W = image.shape[:2]
    tile, T = plan.tile, len(plan.targets)
    ys, xs = tile_starts(H, tile, plan.stride), tile_starts(W, tile, plan.stride)

    def compute_chunk(region: np.ndarray, origin, corners, box) -> np.ndarray:
        runner = _run_tiles(bundle, np.asarray(region), origin, corners, plan)
        while True:
            try:
                next(runner)
            except StopIteration as stop:
                probs, maps = stop.value
                break
        heat, prob = _blend(probs[:, plan.targets], maps, corners, box, tile)
        return np.concatenate([heat, prob])

    rows = []
    for y0 in range(0, H, chunk):
        y1 = min(y0 + chunk, H)
        row = []
        for x0 in range(0, W, chunk):
            x1 = min(x0 + chunk, W)
            corners = [(y, x) for y in ys if y < y1 and y + tile > y0 for x in xs if x < x1 and x + tile > x0]
            ry0, rx0 = min(y for y, _ in corners), min(x for _, x in corners)
            ry1, rx1 = max(y for y, _ in corners) + tile, max(x for _, x in corners) + tile
            task = dask.delayed(compute_chunk)(image[ry0:ry1, rx0:rx1], (ry0, rx0), corners, (y0, y1, x0, x1))
            row.append(da.from_delayed(task, shape=(2 * T, y1 - y0, x1 - x0), dtype=np.float32))
        rows.append(row)
    both = da.concatenate([da.concatenate(row, axis=2) for row in rows], axis=1)
    n_tiles = len(ys) * len(xs)
    return TiledHeatmaps(both[:T], both[T:], [bundle.classes[i] for i in plan.targets], list(plan.targets), n_tiles,
                         tile, plan.stride, plan.method, "tiles", {"chunk": chunk})


def tiled_heatmaps(bundle: "ModelBundle", image, tile: int | None = None, overlap: float = 0.5, classes=None,
                   method: str = "cam", **kwargs) -> TiledHeatmaps:
    """Per-class heatmaps covering a whole (large) image; see :func:`iter_tiled_heatmaps`.

    Returns
    -------
    TiledHeatmaps with ``heatmaps`` (C, H, W) float32 in [0, 1], ``classes``, ``breakdown``
    {class: share of the area where it dominates, summing to 1} and ``probabilities``
    {class: mean probability}.
    """
    gen = iter_tiled_heatmaps(bundle, image, tile, overlap, classes, method, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value

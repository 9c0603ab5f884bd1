"""The network over batches of tiles: tiles to one normalised batch, the method's maps and probabilities."""

from __future__ import annotations

from typing import TYPE_CHECKING, Generator, Sequence

import numpy as np

from ...numerics import check_logits, check_maps
from ...preprocess import to_channels, to_unit
from ..methods import get_method
from .plan import _Plan

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ...bundle import ModelBundle

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

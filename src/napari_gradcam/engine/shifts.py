"""Shift-averaged heatmaps: finer, steadier maps from sub-cell translations of the input.

A CAM or Grad-CAM map has one value per feature-map cell (8 x 8 input pixels for the demo model,
32 x 32 for a ResNet), so its maximum can only sit at a cell centre.  Explaining ``k x k`` copies of
the input translated by fractions of a cell, moving each map back and averaging them samples the
evidence ``k`` times more finely in each direction (the idea of "Augmented Grad-CAM", Morbidelli et
al., ICASSP 2020, with translations only, so no learned super-resolution is needed).  All copies go
through the network as one batch.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

from ..errors import GradCamError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Largest ``shifts`` accepted (``shifts ** 2`` copies of the input go through the network).
MAX_SHIFTS = 8


def check_shifts(shifts) -> int:
    """``shifts`` as an int in 1..MAX_SHIFTS, else one sentence."""
    try:
        if isinstance(shifts, bool):
            raise TypeError
        shifts = operator.index(shifts)
    except TypeError:
        raise GradCamError(f"shifts must be a whole number from 1 to {MAX_SHIFTS}, not {shifts!r}.") from None
    if not 1 <= shifts <= MAX_SHIFTS:
        raise GradCamError(f"shifts must be from 1 to {MAX_SHIFTS} (shifts x shifts passes), not {shifts}.")
    return shifts


def shift_offsets(cell: float, shifts: int) -> list[tuple[int, int]]:
    """The ``shifts ** 2`` (dy, dx) input translations, whole pixels, spread over one cell.

    ``cell`` is the feature-map cell in input pixels (input size / map size).  The first offset is
    (0, 0); steps are ``round(cell / shifts)`` pixels, at least 1.
    """
    step = max(1, round(cell / shifts))
    steps = [i * step for i in range(shifts)]
    return [(dy, dx) for dy in steps for dx in steps]


def _translate(t: "torch.Tensor", dy: int, dx: int) -> "torch.Tensor":
    """(N, C, H, W) -> the same shape, content moved by (dy, dx) pixels (negative: up/left); edges replicated."""
    import torch.nn.functional as F

    h, w = t.shape[-2:]
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))  # left, right, top, bottom
    p = F.pad(t, pad, mode="replicate")
    top, left = max(-dy, 0), max(-dx, 0)
    return p[..., top:top + h, left:left + w]


def shifted_inputs(x: "torch.Tensor", offsets: list[tuple[int, int]]) -> "torch.Tensor":
    """(1, C, S, S) -> (len(offsets), C, S, S): the input moved right/down by each (dy, dx)."""
    import torch

    return torch.cat([_translate(x, dy, dx) for dy, dx in offsets])


def unshift_average(maps: "torch.Tensor", offsets: list[tuple[int, int]], size: int) -> "torch.Tensor":
    """Average maps of shifted inputs back in place.

    Parameters
    ----------
    maps : (N, T, h, w) float, one map per shifted input (``offsets[i]`` for ``maps[i]``) and target.
    size : the input size S; maps are brought to (S, S) (bilinear) before moving them back.

    Returns
    -------
    (T, S, S) float32, the mean of the maps moved back by ``-offsets[i]``.
    """
    import torch.nn.functional as F

    up = F.interpolate(maps.float(), size=(size, size), mode="bilinear", align_corners=False)
    acc = None
    for i, (dy, dx) in enumerate(offsets):
        back = _translate(up[i:i + 1], -dy, -dx)[0]
        acc = back if acc is None else acc + back
    return acc / len(offsets)

"""Reading a layer's output as a spatial map (B, K, h, w), whatever its layout.

Convolutional layers give channels-first maps (B, K, h, w).  Vision transformers give tokens
(B, N, D): a few prefix tokens (the class token; distillation or register tokens) followed by
the h x w patch tokens in row-major order.  Swin's stages give channels-last maps (B, h, w, C).
:func:`layout_of` recognises the three from the shape alone, and :func:`to_spatial` turns a
tensor (an activation or its gradient) into (B, K, h, w), dropping the prefix tokens.

The shapes are ambiguous in rare cases: a 4D (B, a, b, c) output is read as channels-last only
when ``a == b != c`` (a channels-first map is square in its last two axes for the square inputs
the engine feeds), and a token output needs ``N = prefix + g * g`` with at most
:data:`MAX_PREFIX` prefix tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Most non-patch tokens before the patch grid (class, distillation and register tokens).
MAX_PREFIX = 8


@dataclass(frozen=True)
class Layout:
    """How a layer's output holds its spatial grid.

    kind : "nchw" (B, K, h, w) | "nhwc" (B, h, w, K) | "tokens" (B, prefix + h * w, K)
    grid : (h, w)
    prefix : number of leading non-patch tokens (tokens only)
    """

    kind: str
    grid: tuple[int, int]
    prefix: int = 0


def _token_layout(n: int) -> Layout | None:
    for prefix in range(0, min(MAX_PREFIX, n - 1) + 1):
        g = math.isqrt(n - prefix)
        if g > 1 and g * g == n - prefix:
            return Layout("tokens", (g, g), prefix)
    return None


def layout_of(output: Any, min_cells: int = 2) -> Layout | None:
    """The layout of a layer's output, or None when it holds no spatial grid of at least ``min_cells`` cells
    (a 1 x 1 map can be explained, but is no candidate for a default layer)."""
    shape = getattr(output, "shape", None)
    ndim = getattr(output, "ndim", None)
    if shape is None or ndim not in (3, 4) or not callable(getattr(output, "permute", None)):
        return None
    if ndim == 3:
        return _token_layout(int(shape[1]))
    _, a, b, c = (int(s) for s in shape)
    layout = Layout("nhwc", (a, b)) if a == b != c else Layout("nchw", (b, c))
    return layout if layout.grid[0] * layout.grid[1] >= min_cells else None


def to_spatial(t: "torch.Tensor", layout: Layout) -> "torch.Tensor":
    """A tensor laid out as ``layout`` -> (B, K, h, w) (a view where possible; prefix tokens dropped)."""
    if layout.kind == "nchw":
        return t
    if layout.kind == "nhwc":
        return t.permute(0, 3, 1, 2)
    h, w = layout.grid
    return t[:, layout.prefix:].reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2)


def describe(output: Any) -> str:
    """A few words on a non-spatial output, for error messages."""
    import torch

    if not isinstance(output, torch.Tensor):
        return type(output).__name__
    return f"a tensor of shape {tuple(output.shape)}"

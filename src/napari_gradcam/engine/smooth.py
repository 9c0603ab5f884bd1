"""Smoothing options of ``explain(..., smooth=...)``.

``"aug"`` (test-time augmentation, as pytorch-grad-cam's ``aug_smooth``): the map is computed for
the input and for its horizontal flip, each at intensity factors 0.9, 1 and 1.1 of the normalised
network input (six views, in one batch); each view's map is flipped back, divided by its maximum,
and the six are averaged.  Evidence that survives the flips and intensity changes stays; noise
that follows the pixel grid or one intensity level fades.

``"eigen"`` (as pytorch-grad-cam's ``eigen_smooth``): the first principal component of the weighted
activations replaces their channel sum (:func:`.methods.gradient.family.first_component`); gradient CAM family only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import GradCamError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .methods import Method

SMOOTHINGS = ("aug", "eigen")


def check_smooth(smooth, spec: "Method") -> frozenset[str]:
    """``smooth`` (None, "aug", "eigen", "aug+eigen" or a list) as a set, else one sentence."""
    if smooth is None or (isinstance(smooth, str) and smooth.strip().lower() in ("", "none")):
        return frozenset()
    if isinstance(smooth, str):
        items = smooth.replace("+", " ").replace(",", " ").split()
    else:
        items = list(smooth) if isinstance(smooth, (list, tuple, set, frozenset)) else []
    if not items or not all(isinstance(s, str) and s.strip().lower() in SMOOTHINGS for s in items):
        raise GradCamError(f"smooth must be 'aug', 'eigen' or both, not {smooth!r}.")
    chosen = frozenset(s.strip().lower() for s in items)
    if "eigen" in chosen and not spec.eigen_smooth:
        raise GradCamError(f"{spec.title} has no eigen smoothing; it applies to the gradient CAM family "
                           "(Grad-CAM, LayerCAM, ...).")
    return chosen


@dataclass(frozen=True)
class AugView:
    """One test-time view: an optional horizontal flip and an intensity factor."""

    flip: bool
    factor: float

    def apply(self, x: "torch.Tensor") -> "torch.Tensor":
        """(B, C, S, S) network input -> the view."""
        y = x.flip(-1) if self.flip else x
        return y * self.factor if self.factor != 1.0 else y

    def undo(self, maps: "torch.Tensor") -> "torch.Tensor":
        """(..., h, w) maps of the view -> maps in the input's frame."""
        return maps.flip(-1) if self.flip else maps


#: The six views, the identity first (pytorch-grad-cam's default ``tta_transforms``).
AUG_VIEWS = tuple(AugView(flip, factor) for flip in (False, True) for factor in (1.0, 0.9, 1.1))


def normalised(maps: "torch.Tensor") -> "torch.Tensor":
    """(..., h, w) non-negative maps, each divided by its maximum (an empty map stays 0)."""
    import torch

    peak = maps.amax(dim=(-2, -1), keepdim=True)
    return torch.where(peak > 0, maps / peak.clamp_min(1e-30), torch.zeros_like(maps))

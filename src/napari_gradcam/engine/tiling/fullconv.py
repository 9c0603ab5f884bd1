"""Mode "fullconv": CAM's trunk once over the whole image, the head at every feature position, window
averages of the local logits as the tiles' probabilities (see :mod:`napari_gradcam.engine.tiling`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ...errors import GradCamError
from ...numerics import check_logits, check_maps
from ..methods.cam import local_logits
from ..result import TiledHeatmaps
from .plan import _Plan

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ...bundle import ModelBundle

FULLCONV_MAX_PIXELS = 40_000_000


def _check_fullconv(bundle: "ModelBundle", method: str, tile: int, size: tuple[int, int], too_big: bool) -> None:
    """Refuse, in one sentence, what the fully convolutional mode cannot do: a method other than CAM, an
    image too large for the whole image's activations."""
    if method != "cam":
        raise GradCamError("The fully convolutional mode computes CAM only; use mode 'tiles' for Grad-CAM.")
    (H, W), S = size, bundle.input_size
    if too_big or max(S, round(H * S / tile)) * max(S, round(W * S / tile)) > FULLCONV_MAX_PIXELS:
        raise GradCamError(f"An image of {H} x {W} pixels is too large for the fully convolutional mode; "
                           "use mode 'tiles', which processes it chunk by chunk.")


def _fullconv(bundle: "ModelBundle", img: np.ndarray, plan: _Plan, topk: int | None) -> TiledHeatmaps:
    """Fully convolutional CAM over the whole image (see module docstring)."""
    import torch
    import torch.nn.functional as F

    from ...preprocess import resize_maps, to_channels, to_unit

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
    check_logits(bundle, logits, None, what="the whole image (fully convolutional)")
    check_maps(bundle, cams, "cam", None)
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

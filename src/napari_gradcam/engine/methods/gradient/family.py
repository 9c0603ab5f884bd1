"""The shared code of the gradient CAM family: hooks, backward pass, weighted sum, ReLU, fusion.

A method of the family (:mod:`.formulas`) is one function ``weigh(A, G)`` of a layer's activations A
(B, K, h, w) and the gradients G = d(score)/dA, returning the weighted activations (B, K, h, w).
Everything else lives here and is the same for every method:

1. one forward pass with the target layers hooked (:func:`.hooks.capture`): the trunk runs under
   ``no_grad`` and only the layers after the first target layer record a graph;
2. for each target, one backward pass through that head, w.r.t. the hooked activations only
   (``torch.autograd.grad``: no parameter gradient, no ``.grad`` left on the model);
3. the map ``ReLU(sum_k weigh(A, G)_k)``, or with ``eigen`` the first principal component of the
   weighted activations in place of the channel sum;
4. with several layers, :func:`fuse_maps`: each map scaled to [0, 1] (min-max), upsampled to the
   finest grid and averaged (pytorch-grad-cam's aggregation; the default), or combined by the
   element-wise maximum (the fusion of LayerCAM, Jiang et al., IEEE TIP 2021; torchcam).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from ....errors import GradCamError, LayerError
from ...hooks import Captured, capture
from ..registry import target_scores

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


@dataclass(frozen=True)
class GradientCam:
    """One method of the family.

    weigh : ``weigh(A, G) -> (B, K, h, w)`` weighted activations (A, G float32 (B, K, h, w); G is
        None when ``uses_gradients`` is False)
    uses_gradients : False for methods of the activations alone (one forward pass, no backward)
    eigen : the map is always the first principal component (Eigen-CAM), never the channel sum
    fusion_gamma : before fusing layers by their maximum, scale each [0, 1] map by ``tanh(gamma * map)`` (LayerCAM)
    """

    name: str
    weigh: Callable
    uses_gradients: bool = True
    eigen: bool = False
    fusion_gamma: float | None = None


def _predicted(logits: "torch.Tensor") -> "torch.Tensor":
    return logits.gather(1, logits.argmax(dim=1, keepdim=True))[:, 0]


def _gradients(scores: "torch.Tensor", box: Captured, retain: bool) -> list["torch.Tensor"]:
    """d(sum of scores)/d(each hooked output), as (B, K, h, w) maps."""
    import torch

    from ....introspect.layout import to_spatial

    if not scores.requires_grad:
        raise GradCamError(f"The scores to explain do not depend on layer {box.names[0]!r}; pick another layer "
                           "(or a target function of the logits that keeps their gradient).")
    grads = torch.autograd.grad(scores.sum(), box.outputs, retain_graph=retain, allow_unused=True)
    for name, g in zip(box.names, grads):
        if g is None:
            raise LayerError(f"The output does not depend on layer {name!r}; pick another layer.")
    return [to_spatial(g, layout) for g, layout in zip(grads, box.layouts)]


def first_component(weighted: "torch.Tensor") -> "torch.Tensor":
    """(B, K, h, w) -> (B, h, w): each image's positions projected on the first principal component
    of its K-channel vectors (centred; as pytorch-grad-cam's ``get_2d_projection``).

    A principal component has no sign of its own; it is oriented so that the projection correlates
    positively with the channel sum (the map without smoothing), so "more evidence" stays positive.
    """
    import torch

    b, k, h, w = weighted.shape
    x = torch.nan_to_num(weighted.float()).flatten(2).transpose(1, 2)  # (B, hw, K)
    x = x - x.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    proj = (x @ vh[:, 0, :, None])[..., 0]  # (B, hw)
    agree = (proj * x.sum(dim=2)).sum(dim=1)
    sign = torch.where(agree < 0, -1.0, 1.0).to(proj.dtype)
    return (proj * sign[:, None]).reshape(b, h, w)


def layer_map(cam: GradientCam, act: "torch.Tensor", grad: "torch.Tensor | None", eigen: bool) -> "torch.Tensor":
    """One layer's map (B, h, w), ReLU applied."""
    import torch

    weighted = cam.weigh(act.float(), None if grad is None else grad.float())
    m = first_component(weighted) if (eigen or cam.eigen) else weighted.sum(dim=1)
    return torch.relu(m)


#: How several layers' maps are combined (see :func:`fuse_maps`).
FUSIONS = ("mean", "max")


def fuse_maps(maps: "Sequence[torch.Tensor]", how: str = "mean", gamma: float | None = None) -> "torch.Tensor":
    """Fuse maps of the same images from several layers.

    Parameters
    ----------
    maps : (B, T, h_l, w_l) float, non-negative, one per layer.
    how : "mean": the mean of the maps (pytorch-grad-cam's multi-layer aggregation): a position must
        carry evidence in several layers, so the fine layers' detail is kept where the deep layers agree;
        "max": the element-wise maximum (LayerCAM's fusion, Jiang et al. 2021, as torchcam's ``fuse_cams``).
    gamma : with "max", LayerCAM's scaling ``tanh(gamma * map)`` of the [0, 1] maps (gamma 2 in the
        paper), which lifts the weak but precise responses of shallow layers; None: no scaling.

    Returns
    -------
    (B, T, H, W) float32 in [0, 1] at the finest layer's grid; each map is first scaled to [0, 1] by
    its own minimum and maximum (as both libraries) and upsampled bilinearly.
    """
    import torch
    import torch.nn.functional as F

    size = tuple(max(s) for s in zip(*[tuple(m.shape[-2:]) for m in maps]))
    fused = None
    for m in maps:
        low = m.amin(dim=(2, 3), keepdim=True)
        span = m.amax(dim=(2, 3), keepdim=True) - low
        n = torch.where(span > 0, (m - low) / span.clamp_min(1e-30), torch.zeros_like(m))
        if how == "max" and gamma is not None:
            n = torch.tanh(gamma * n)
        up = F.interpolate(n.float(), size=size, mode="bilinear", align_corners=False)
        if fused is None:
            fused = up
        else:
            fused = torch.maximum(fused, up) if how == "max" else fused + up
    return fused if how == "max" else fused / len(maps)


def _per_layer_maps(cam: GradientCam, logits, box: Captured, targets, eigen: bool) -> list["torch.Tensor"]:
    """For each layer, (B, T, h, w) maps of the T targets (None: each image's predicted class)."""
    import torch

    acts = [box.spatial(i) for i in range(len(box.names))]
    if not cam.uses_gradients:  # the map does not depend on the target: computed once
        maps = [layer_map(cam, a, None, eigen) for a in acts]
        return [m[:, None].repeat(1, len(targets or [None]), 1, 1) for m in maps]
    out: list[list] = [[] for _ in acts]
    for j, t in enumerate(targets or [None]):
        scores = _predicted(logits) if t is None else target_scores(logits, t)
        grads = _gradients(scores, box, retain=j < len(targets or [None]) - 1)
        for i, (a, g) in enumerate(zip(acts, grads)):
            out[i].append(layer_map(cam, a, g, eigen))
    return [torch.stack(per_target, dim=1) for per_target in out]


def gradient_maps(model: "nn.Module", x: "torch.Tensor", targets: "Sequence | None", layers: Sequence[str],
                  cam: GradientCam, eigen: bool = False, fusion: str = "mean") -> tuple["torch.Tensor", "torch.Tensor", list]:
    """Maps of ``cam`` for several targets and layers from one forward pass.

    Parameters
    ----------
    x : (B, C, S, S) float32 input on the model's device.
    targets : class indices or score functions of the logits (see :func:`..registry.target_scores`),
        the same for every image; None = each image's predicted class.
    layers : dotted names of the layers to explain; several are fused (:func:`fuse_maps`).
    eigen : the first principal component of the weighted activations instead of their sum.
    fusion : "mean" or "max", how several layers' maps are combined (:func:`fuse_maps`).

    Returns
    -------
    logits : (B, n_classes) float32
    maps : (B, T, h, w) float32, ReLU applied (T = len(targets), or 1 for None); fused maps are in [0, 1]
    targets : what each map explains; for None, the predicted class of image 0
    """
    import torch

    grad = cam.uses_gradients  # a caller's inference_mode is lifted for the head's graph
    with torch.inference_mode(not grad), torch.set_grad_enabled(False), capture(model, layers, grad=grad) as box:
        logits = model(x)
        maps = _per_layer_maps(cam, logits, box, targets, eigen)
    used = list(targets) if targets is not None else [int(logits[0].argmax())]
    fused = maps[0] if len(maps) == 1 else fuse_maps(maps, fusion, cam.fusion_gamma)
    return logits.detach().float(), fused.float(), used

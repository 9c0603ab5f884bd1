"""explain() and feature_maps(): one image in, plain results out."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import GradCamError
from ..models import get_module
from ..preprocess import bundle_tensor, check_image, resize_maps
from .hooks import StopForward, capture
from .methods import Method, get_method
from .result import FeatureMaps, Heatmap
from .shifts import check_shifts, shift_offsets, shifted_inputs, unshift_average

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import ModelBundle


def _resolve_targets(bundle: "ModelBundle", target) -> tuple[list[int] | None, bool]:
    """-> (class indices or None for 'predicted', whether a list of results is wanted)."""
    if target is None or (isinstance(target, str) and target.lower() in ("predicted", "top")):
        return None, False
    if isinstance(target, str) and target.lower() == "all":
        return list(range(bundle.n_classes)), True
    if isinstance(target, (list, tuple, np.ndarray)):
        if len(target) == 0:
            raise GradCamError("An empty list of target classes was given.")
        return [bundle.class_index(t) for t in target], True
    return [bundle.class_index(target)], False


def _layer_for(spec: Method, bundle: "ModelBundle", layer: str | None) -> str:
    """The layer a method is computed at: its fixed layer, the one asked for, or the model's default."""
    if spec.fixed_layer is not None:
        fixed = spec.fixed_layer(bundle)
        if layer not in (None, "", fixed):
            raise GradCamError(f"{spec.title} is defined at the layer feeding the pooling head ({fixed}); "
                               f"use Grad-CAM to explain {layer!r}.")
        return fixed
    used = layer or bundle.target_layer
    get_module(bundle.model, used)
    return used


def explain(
    bundle: "ModelBundle",
    image,
    method: str = "gradcam",
    target=None,
    layer: str | None = None,
    shifts: int = 1,
) -> "Heatmap | list[Heatmap]":
    """Explain the model's decision on one image as a heatmap.

    Parameters
    ----------
    image : (H, W) or (H, W, 3|4) array, any dtype.
    method : any name of ``list_methods()`` (CAM family, perturbation CAMs, pixel attributions).
    target : None (the predicted class), a class name or index, a list of them, or "all".
        All requested classes come from one forward pass.
    layer : dotted layer name for Grad-CAM(++); default the model's target layer. CAM always
        uses the layer feeding the global-average-pooling head.
    shifts : 1 (default) or k > 1: average the maps of k x k copies of the input translated by
        fractions of a feature-map cell (one batch of k*k images): a k times finer heatmap whose
        maximum is no longer tied to cell centres.  See :mod:`napari_gradcam.engine.shifts`.

    Returns
    -------
    Heatmap, or a list of Heatmap (one per class) when ``target`` is a list or "all".
    ``Heatmap.data`` is (H, W) float32 in [0, 1] at the image's own size; for signed methods
    (``Method.signed``: integrated gradients, occlusion, guided backprop, guided Grad-CAM) in [-1, 1],
    divided by the largest absolute value.  Pixel attributions ignore ``layer`` (guided Grad-CAM uses
    it for its Grad-CAM part) and report ``Heatmap.layer == "input"``.
    """
    spec = get_method(method)
    method = spec.name
    shifts = check_shifts(shifts)
    if shifts > 1 and spec.family == "attribution":
        raise GradCamError(f"{spec.title} is already computed per input pixel; sub-cell shifts apply to layer maps.")
    img = check_image(image)
    targets, many = _resolve_targets(bundle, target)
    x = bundle_tensor(bundle, [img]).to(bundle.device)
    bundle.model.eval()
    used_layer = _layer_for(spec, bundle, layer) if spec.uses_layer else "input"
    out = spec.compute(bundle, x, targets, [used_layer] if spec.uses_layer else [])
    logits, indices, raw = out.logits, out.targets, out.maps[0]
    import torch

    probs = torch.softmax(logits[0], dim=0).cpu().numpy()
    positive = raw.abs() if spec.signed else torch.relu(raw)
    peaks = positive.amax(dim=(1, 2))
    if shifts > 1:  # the other k*k - 1 translations, for the same classes, in one batch
        offsets = shift_offsets(x.shape[-1] / raw.shape[-1], shifts)
        xs = shifted_inputs(x, offsets[1:])
        more = spec.compute(bundle, xs, indices, [used_layer]).maps
        fine = unshift_average(torch.cat([raw[None], more]).relu_(), offsets, x.shape[-1])
        full = resize_maps(fine, img.shape[:2])
        scale = full.amax(dim=(1, 2))
    else:  # signed maps keep their sign: scaled by the largest |value| into [-1, 1]
        full = resize_maps(raw if spec.signed else positive, img.shape[:2])
        scale = peaks
    full = full / torch.where(scale > 0, scale, torch.ones_like(scale)).view(-1, 1, 1)
    full = full.clamp_(-1 if spec.signed else 0, 1).cpu().numpy().astype(np.float32, copy=False)
    raw_np = raw.cpu().numpy().astype(np.float32, copy=False)
    results = [
        Heatmap(full[i], raw_np[i], float(peaks[i]), bundle.classes[c], c, float(probs[c]), probs,
                used_layer, method, shifts, spec.signed)
        for i, c in enumerate(indices)
    ]
    return results if many else results[0]


def feature_maps(bundle: "ModelBundle", image, layer: str | None = None, n: int = 36) -> FeatureMaps:
    """The ``n`` most active channels (highest mean activation) of ``layer`` for one image.

    Returns
    -------
    FeatureMaps with ``maps`` (n, h, w) float32 raw activations, most active first.
    """
    import torch

    img = check_image(image)
    layer = layer or bundle.target_layer
    if n < 1:
        raise GradCamError(f"The number of feature maps must be at least 1, not {n}.")
    x = bundle_tensor(bundle, [img]).to(bundle.device)
    bundle.model.eval()
    with torch.inference_mode(), capture(bundle.model, layer, stop=True) as box:
        try:
            bundle.model(x)
        except StopForward:
            pass
    act = box.activation[0].float()
    scores = act.mean(dim=(1, 2))
    order = torch.argsort(scores, descending=True)[: min(n, act.shape[0])]
    return FeatureMaps(act[order].cpu().numpy(), order.cpu().numpy(), scores[order].cpu().numpy(), layer)

"""CAM (Zhou et al. 2016): class maps from the last feature map and the linear head's weights.

For a head ``logits = W @ GAP(A) + b`` with A (B, K, h, w), the class activation map of
class c is ``sum_k W[c, k] * A[:, k]``; its spatial mean plus ``b[c]`` is exactly the logit.
All classes come from ONE forward pass and no backward pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import GradCamError, LayerError
from ...introspect import CamHead, get_module
from ...introspect.discover import cam_features, default_target_layer
from ..hooks import capture
from .registry import MapOutput, Method, register

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ...bundle import ModelBundle


def cam_head(bundle: "ModelBundle") -> CamHead:
    """Where the GAP + linear head is, found from the module (:func:`napari_gradcam.introspect.cam_features`:
    on the bundle's target layer or the default layer where they feed it), or a LayerError naming
    Grad-CAM as the alternative."""
    try:
        default = default_target_layer(bundle.model, bundle.in_channels, bundle.input_size)
    except LayerError:
        default = ""
    prefer = [name for name in (bundle.target_layer, default) if name]
    head = cam_features(bundle.model, bundle.in_channels, bundle.input_size, prefer)
    if head is None:
        raise LayerError(
            f"CAM needs a global-average-pooling + linear head, which this {bundle.architecture} model does not "
            "have; use Grad-CAM or Grad-CAM++ instead."
        )
    return head


def class_activation_maps(bundle: "ModelBundle", x: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """All classes' CAMs for a batch in one forward pass.

    Parameters
    ----------
    x : torch.Tensor
        (B, C, S, S) float32 network input on the bundle's device.

    Returns
    -------
    logits : (B, n_classes) float32
    maps : (B, n_classes, h, w) float32, signed (bias not included)
    """
    import torch

    head = cam_head(bundle)
    linear = get_module(bundle.model, head.linear)
    with torch.inference_mode(), capture(bundle.model, head.features) as box:
        logits = bundle.model(x)
        feats = box.activation
        if head.relu:
            feats = torch.relu(feats)
        maps = torch.einsum("ck,bkhw->bchw", linear.weight.to(feats.dtype), feats)
    return logits.float(), maps.float()


def local_logits(bundle: "ModelBundle", x: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """The head applied at every feature position (for fully convolutional CAM over a large image).

    Runs only the trunk up to the CAM feature layer (no pooling), so ``x`` may be any size.

    Returns
    -------
    cams : (B, n_classes, h, w) float32, ``W @ A`` at each position (signed)
    logits : (B, n_classes, h, w) float32, ``W @ A + b``: averaging it over a window gives the
        logits of a crop covering that window
    """
    import torch

    from ..hooks import StopForward

    head = cam_head(bundle)
    linear = get_module(bundle.model, head.linear)
    with torch.inference_mode(), capture(bundle.model, head.features, stop=True) as box:
        try:
            bundle.model(x)
        except StopForward:
            pass
        feats = box.activation
        if head.relu:
            feats = torch.relu(feats)
        cams = torch.einsum("ck,bkhw->bchw", linear.weight.to(feats.dtype), feats).float()
        bias = linear.bias if linear.bias is not None else torch.zeros(cams.shape[1], device=cams.device)
        logits = cams + bias.float().view(1, -1, 1, 1)
    return cams, logits


def _cam_compute(bundle, x, targets, layers, **_options) -> MapOutput:
    if targets is not None and any(callable(t) for t in targets):
        raise GradCamError("CAM explains classes, not a function of the logits; use Grad-CAM or HiResCAM for that.")
    import torch

    logits, all_maps = class_activation_maps(bundle, x)
    if targets is None:  # each image's own predicted class
        own = logits.argmax(dim=1)
        return MapOutput(logits, all_maps[torch.arange(len(own)), own][:, None], [int(own[0])])
    return MapOutput(logits, all_maps[:, list(targets)], list(targets))


register(Method(
    "cam", "CAM", "cam",
    "class activation map: the linear head's weights applied at every position of the pooled layer "
    "(one forward pass, no gradients)",
    _cam_compute, fixed_layer=lambda bundle: cam_head(bundle).features,
))

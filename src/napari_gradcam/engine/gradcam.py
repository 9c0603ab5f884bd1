"""Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018).

Gradients of the target logits are taken with ``torch.autograd.grad`` with respect to the
hooked activation only: no parameter gradient is computed and no ``.grad`` is left on the
model.  The forward pass records a graph only after the target layer (see ``hooks``), so
the cost is about one forward pass plus a backward pass through the head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ..errors import GradCamError
from .hooks import capture
from .methods import MapOutput, Method, register

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..bundle import ModelBundle

def weight_maps(activation: "torch.Tensor", grads: "torch.Tensor", method: str) -> "torch.Tensor":
    """Channel-weighted maps from activations and gradients, before ReLU.

    activation, grads : (B, K, h, w) -> (B, h, w)
    """
    import torch

    if method == "gradcam":
        weights = grads.mean(dim=(2, 3), keepdim=True)
    else:  # Grad-CAM++ with the exponential-score closed form (as in the paper and pytorch-grad-cam)
        g2 = grads.pow(2)
        g3 = g2 * grads
        sum_a = activation.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)  # eps as in pytorch-grad-cam, for comparable maps
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        weights = (torch.relu(grads) * alpha).sum(dim=(2, 3), keepdim=True)
    return (weights * activation).sum(dim=1)


def gradient_maps(
    bundle: "ModelBundle", x: "torch.Tensor", targets: "Sequence[int] | None", layer: str, method: str = "gradcam"
) -> tuple["torch.Tensor", "torch.Tensor", list[int]]:
    """Grad-CAM / Grad-CAM++ maps for several target classes from one forward pass.

    Parameters
    ----------
    x : (B, C, S, S) float32 input on the bundle's device.
    targets : class indices, the same for every image; None = each image's predicted class.
    layer : dotted name of the layer to explain.

    Returns
    -------
    logits : (B, n_classes) float32
    maps : (B, T, h, w) float32, ReLU applied (T = len(targets), or 1 for None)
    targets : the class index of each map; for None, the predicted class of each image
    """
    import torch

    model = bundle.model
    with torch.no_grad(), capture(model, layer, grad=True) as box:
        logits = model(x)
        act = box.activation
        if act is None:
            raise GradCamError(f"Layer {layer!r} was not used in the forward pass; pick another layer.")
        if not logits.requires_grad:
            raise GradCamError(f"The output does not depend on layer {layer!r}; pick another layer.")
        if targets is None:
            pred = logits.argmax(dim=1)
            grads = torch.autograd.grad(logits.gather(1, pred[:, None]).sum(), act)[0]
            maps = torch.relu(weight_maps(act.detach(), grads, method))[:, None]
            used = [int(p) for p in pred]
        else:
            out = []
            for i, t in enumerate(targets):
                grads = torch.autograd.grad(logits[:, t].sum(), act, retain_graph=i < len(targets) - 1)[0]
                out.append(torch.relu(weight_maps(act.detach(), grads, method)))
            maps = torch.stack(out, dim=1)
            used = [int(t) for t in targets]
    return logits.detach().float(), maps.float(), used


def _compute(method: str):
    def compute(bundle, x, targets, layers, **_options) -> MapOutput:
        logits, maps, used = gradient_maps(bundle, x, targets, layers[0], method)
        return MapOutput(logits, maps, used)

    return compute


register(Method(
    "gradcam", "Grad-CAM", "cam",
    "gradient-weighted activations: channel weights = spatial mean of d(score)/d(activation)",
    _compute("gradcam"), aliases=("grad-cam",),
))
register(Method(
    "gradcam++", "Grad-CAM++", "cam",
    "Grad-CAM with second-order pixel weights: sharper when several regions carry evidence",
    _compute("gradcam++"), aliases=("grad-cam++", "gradcampp", "gradcamplusplus"),
))

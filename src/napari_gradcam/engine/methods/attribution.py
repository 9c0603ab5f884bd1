"""Pixel attributions from captum: one value per input pixel, at the network input's resolution.

captum (Kokhlikyan et al. 2020) computes the attributions; this module picks its settings, the target
classes and how the (B, C, S, S) attribution becomes one (S, S) map per image:

* ``saliency`` (Simonyan et al. 2014): ``|d y_c / d x|``, the maximum over the input channels; unsigned.
* ``integrated-gradients`` (Sundararajan et al. 2017): ``(x - x') * mean_a d y_c(x' + a (x - x')) / d x``
  over ``n_steps=50`` Gauss-Legendre points from a black image ``x'``; summed over channels; signed
  (the map sums to ``y_c(x) - y_c(x')`` up to the quadrature error).
* ``smoothgrad`` (Smilkov et al. 2017): the saliency averaged over ``nt_samples=25`` copies of the input
  with Gaussian noise of 15 % of its value range (seed 0: the same map every call); unsigned.
* ``occlusion`` (Zeiler & Fergus 2014): ``y_c(x) - y_c(x with a black square)`` for a square of 1/8
  of the input side slid by 1/16, averaged where squares overlap; signed.
* ``guided-backprop`` (Springenberg et al. 2015): the gradient with negative gradients stopped at every
  ``nn.ReLU`` module (functional ReLUs are not guided); summed over channels; signed.
* ``guided-gradcam`` (Selvaraju et al. 2017): guided backprop times the Grad-CAM map of the target layer
  (upsampled nearest, as captum does); summed over channels; signed.  captum's Grad-CAM reads (B, K, h, w)
  maps only: for token and channels-last layers the Grad-CAM map is the engine's, on the layer's grid.

Target classes: the same for every image, or each image's predicted class.  For the one-pass methods
the predicted class is taken inside captum's own forward pass (no extra pass).  captum computes
gradients with ``torch.autograd.grad`` on the input only: no ``.grad`` is left on the model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .registry import MapOutput, Method, register

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ...bundle import ModelBundle

#: settings of the methods (captum's names); tests and the benchmark read them from here
IG_STEPS = 50
SMOOTHGRAD_SAMPLES = 25
SMOOTHGRAD_NOISE = 0.15  # standard deviation, a fraction of the input's value range
SMOOTHGRAD_SEED = 0
OCCLUSION_WINDOW = 1 / 8  # side of the occluding square, a fraction of the input side
OCCLUSION_STRIDE = 1 / 16


class _Forward:
    """The model as captum's forward function, remembering the logits of its first call.

    With ``predicted=True`` it returns the score of each image's predicted class (found in that first
    call) as (B, 1), so captum needs no target and no extra pass.
    """

    def __init__(self, model, predicted: bool = False) -> None:
        self.model = model
        self.predicted = predicted
        self.logits = None
        self.classes = None

    def __call__(self, x):
        out = self.model(x)
        if self.logits is None:
            self.logits = out.detach().float()
            self.classes = self.logits.argmax(dim=1)
        if self.predicted:
            return out.gather(1, self.classes[:, None])
        return out


def black_baseline(bundle: "ModelBundle", x: "torch.Tensor") -> "torch.Tensor":
    """A black image in the network's input space (its normalisation applied): (1, C, S, S)."""
    import torch

    mean = torch.as_tensor(bundle.config.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(bundle.config.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return ((0 - mean) / std).expand(1, x.shape[1], *x.shape[2:]).contiguous()


def occlusion_window(size: int) -> tuple[int, int]:
    """(window, stride) in pixels for an input of ``size`` pixels."""
    window = max(1, round(size * OCCLUSION_WINDOW))
    return window, max(1, round(size * OCCLUSION_STRIDE))


def reduce_channels(attr: "torch.Tensor", how: str) -> "torch.Tensor":
    """(B, C, S, S) attribution -> (B, S, S) float32: "sum", "mean" or "max" over the channels."""
    attr = attr.detach().float()
    if how == "max":
        return attr.amax(dim=1)
    return attr.mean(dim=1) if how == "mean" else attr.sum(dim=1)


@dataclass(frozen=True)
class _Recipe:
    """How one captum method runs: ``run(bundle, x, forward, target, layer) -> (B, C, S, S)``."""

    run: Callable[..., Any]
    reduce: str
    one_pass: bool  # the predicted class can come from captum's own pass


def _saliency(bundle, x, forward, target, layer):
    from captum.attr import Saliency

    return Saliency(forward).attribute(x, target=target, abs=True)


def _integrated_gradients(bundle, x, forward, target, layer):
    from captum.attr import IntegratedGradients

    return IntegratedGradients(forward).attribute(
        x, baselines=black_baseline(bundle, x), target=target, n_steps=IG_STEPS,
        internal_batch_size=_internal_batch(x))


def _smoothgrad(bundle, x, forward, target, layer):
    import torch
    from captum.attr import NoiseTunnel, Saliency

    stdev = float(SMOOTHGRAD_NOISE * (x.max() - x.min()))
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(SMOOTHGRAD_SEED)
        return NoiseTunnel(Saliency(forward)).attribute(
            x, nt_type="smoothgrad", nt_samples=SMOOTHGRAD_SAMPLES, stdevs=stdev,
            nt_samples_batch_size=_internal_batch(x), target=target, abs=True)


def _occlusion(bundle, x, forward, target, layer):
    from captum.attr import Occlusion

    window, stride = occlusion_window(x.shape[-1])
    c = x.shape[1]
    return Occlusion(forward).attribute(
        x, sliding_window_shapes=(c, window, window), strides=(c, stride, stride),
        baselines=black_baseline(bundle, x), target=target, perturbations_per_eval=_internal_batch(x))


def _guided_backprop(bundle, x, forward, target, layer):
    from captum.attr import GuidedBackprop

    gb = GuidedBackprop(bundle.model)
    gb.forward_func = forward
    return gb.attribute(x, target=target)


def _guided_gradcam(bundle, x, forward, target, layer):
    """captum's GuidedGradCam, composed from its parts (guided backprop times its Grad-CAM, upsampled
    nearest) so that the layer's layout is seen on the way: captum's Grad-CAM reads (B, K, h, w) maps
    only, so for tokens and channels-last outputs the Grad-CAM map is the engine's, on the layer's grid."""
    import torch
    import torch.nn.functional as F
    from captum.attr import LayerGradCam

    from ...introspect.modules import get_module
    from .gradient.family import gradient_maps
    from .gradient.formulas import family_member
    from ...introspect.layout import layout_of

    module = get_module(bundle.model, layer)
    kinds: list = []
    handle = module.register_forward_hook(lambda _m, _i, out: kinds.append(getattr(layout_of(out, 1), "kind", None)))
    try:
        guided = _guided_backprop(bundle, x, forward, target, layer)
    finally:
        handle.remove()
    if kinds and kinds[0] == "nchw":
        cams = LayerGradCam(forward, module).attribute(x, target=target, relu_attributions=True)
    else:
        classes = [target] * len(x) if target is not None else [int(c) for c in forward.classes]
        cams = torch.cat([gradient_maps(bundle.model, x[b: b + 1], [c], [layer], family_member("gradcam"))[1]
                          for b, c in enumerate(classes)])
    return guided * F.interpolate(cams.detach(), size=x.shape[2:], mode="nearest")


def _internal_batch(x: "torch.Tensor") -> int:
    """Inputs per captum pass: 16 at 224 px on the CPU, more for smaller inputs or on a GPU."""
    budget = (16 if x.device.type == "cpu" else 128) * 3 * 224 * 224
    return int(max(1, min(256, budget // max(1, x[0].numel()))))


RECIPES: dict[str, _Recipe] = {
    "saliency": _Recipe(_saliency, "max", True),
    "integrated-gradients": _Recipe(_integrated_gradients, "sum", False),
    "smoothgrad": _Recipe(_smoothgrad, "max", False),
    "occlusion": _Recipe(_occlusion, "mean", False),
    "guided-backprop": _Recipe(_guided_backprop, "sum", True),
    "guided-gradcam": _Recipe(_guided_gradcam, "sum", True),
}


def attribution_maps(bundle: "ModelBundle", x: "torch.Tensor", targets: "Sequence[int] | None",
                     method: str, layer: str | None = None) -> MapOutput:
    """Pixel attribution maps for a batch.

    Parameters
    ----------
    x : (B, C, S, S) float32 network input on the bundle's device.
    targets : class indices (the same for every image), or None for each image's predicted class.
    method : a key of :data:`RECIPES`; layer : the Grad-CAM layer of "guided-gradcam".

    Returns
    -------
    MapOutput with maps (B, T, S, S) float32 (signed where the method is).
    """
    import torch

    recipe = RECIPES[method]
    model = bundle.model
    x = x.detach()
    maps = []
    logits = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum warns about its own ReLU hooks and input gradients
        if targets is None and recipe.one_pass:
            forward = _Forward(model, predicted=True)
            maps.append(reduce_channels(recipe.run(bundle, x, forward, None, layer), recipe.reduce))
            logits = forward.logits
            used = [int(forward.classes[0])]
        else:
            if targets is None:
                with torch.inference_mode():
                    logits = model(x).float()
                wanted = [logits.argmax(dim=1).tolist()]
                used = [int(wanted[0][0])]
            else:
                wanted = used = [int(t) for t in targets]
            for t in wanted:
                forward = _Forward(model)
                maps.append(reduce_channels(recipe.run(bundle, x, forward, t, layer), recipe.reduce))
                if logits is None:
                    logits = forward.logits if recipe.one_pass else None
    if logits is None:
        with torch.inference_mode():
            logits = model(x).float()
    return MapOutput(logits.clone(), torch.stack(maps, dim=1), used)


def _compute(method: str):
    def compute(bundle, x, targets, layers, **_options) -> MapOutput:
        return attribution_maps(bundle, x, targets, method, layers[0] if layers else None)

    return compute


_ABOUT = {
    "saliency": ("Saliency", False, "|gradient| of the class score at each pixel (one backward pass)"),
    "integrated-gradients": ("Integrated Gradients", True,
                             "gradients averaged along a path from a black image, times the input difference"),
    "smoothgrad": ("SmoothGrad", False, "saliency averaged over noisy copies of the input (less speckle)"),
    "occlusion": ("Occlusion", True, "drop of the class score when a square of the image is blacked out"),
    "guided-backprop": ("Guided Backprop", True, "gradient with negative gradients stopped at every ReLU"),
    "guided-gradcam": ("Guided Grad-CAM", True, "guided backprop times the Grad-CAM map: fine and class-specific"),
}

for _name, (_title, _signed, _about) in _ABOUT.items():
    register(Method(
        _name, _title, "attribution", _about, _compute(_name), signed=_signed,
        uses_layer=_name == "guided-gradcam",
        aliases={"integrated-gradients": ("ig", "integratedgradients"), "guided-backprop": ("guidedbackprop",),
                 "guided-gradcam": ("guidedgradcam",), "saliency": ("gradient", "vanilla-gradient")}.get(_name, ()),
        extra={"slow": _name == "occlusion"},
    ))

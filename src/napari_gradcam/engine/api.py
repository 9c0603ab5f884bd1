"""explain() and feature_maps(): one image in, plain results out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import GradCamError
from ..numerics import check_logits, check_maps
from ..validate import check_bundle, check_int
from ..preprocess import bundle_tensor, check_image, resize_maps
from .core import FUSIONS
from .hooks import StopForward, capture
from .layers import default_layer, layer_names, resolve_layers
from .methods import MapOutput, Method, get_method, target_scores
from .result import FeatureMaps, Heatmap
from .shifts import check_shifts, shift_offsets, shifted_inputs, unshift_average
from .smooth import AUG_VIEWS, SMOOTHINGS, check_smooth, normalised

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..bundle import ModelBundle

#: The name of a map explaining a score function of the logits (``target=callable``).
CUSTOM_TARGET = "custom"


def _resolve_targets(bundle: "ModelBundle", target) -> tuple[list | None, bool]:
    """-> (class indices or score functions, or None for 'predicted'; whether a list of results is wanted)."""
    if callable(target):
        return [target], False
    if target is None or (isinstance(target, str) and target.lower() in ("predicted", "top")):
        return None, False
    if isinstance(target, str) and target.lower() == "all":
        return list(range(bundle.n_classes)), True
    if isinstance(target, (list, tuple, np.ndarray)):
        if len(target) == 0:
            raise GradCamError("An empty list of target classes was given.")
        return [t if callable(t) else bundle.class_index(t) for t in target], True
    return [bundle.class_index(target)], False


def check_output(bundle: "ModelBundle", out: "MapOutput", method: str, layer: str | None, x) -> None:
    """NumericalError for NaN or infinite logits or maps (naming the model, the method and the layer)."""
    check_logits(bundle, out.logits, x)
    check_maps(bundle, out.maps, method, layer, x)


@dataclass
class _Run:
    """One explanation's fixed parts: the method, model, layers and options."""

    spec: Method
    bundle: "ModelBundle"
    layers: list[str]
    options: dict

    def compute(self, x: "torch.Tensor", targets) -> MapOutput:
        """The method's output for a batch; NaN scores or maps are refused, naming the layer."""
        out = self.spec.compute(self.bundle, x, targets, self.layers, **self.options)
        check_output(self.bundle, out, self.spec.name, "+".join(self.layers) or None, x)
        return out

    def maps(self, x: "torch.Tensor", targets) -> "torch.Tensor":
        """(N, T, h, w) non-negative maps of a batch."""
        return self.compute(x, targets).maps.relu()


def _view_map(run: _Run, x: "torch.Tensor", targets, shifts: int, first: "torch.Tensor | None" = None):
    """(T, r, r) non-negative map of one input (1, C, S, S): the layer's map (r = h), or with
    ``shifts > 1`` the average of k x k sub-cell shifted copies' maps (r = S).  ``first``: the
    input's own (1, T, h, w) maps, when already computed."""
    import torch

    first = run.maps(x, targets) if first is None else first.relu()
    if shifts == 1:
        return first[0]
    offsets = shift_offsets(x.shape[-1] / first.shape[-1], shifts)
    more = run.maps(shifted_inputs(x, offsets[1:]), targets)
    return unshift_average(torch.cat([first, more]), offsets, x.shape[-1])


def _aug_map(run: _Run, x: "torch.Tensor", targets, shifts: int, first: "torch.Tensor") -> "torch.Tensor":
    """(T, r, r): the mean of the six test-time views' maps, each moved back and divided by its maximum."""
    import torch

    if shifts == 1:  # the five other views in one batch
        more = run.maps(torch.cat([v.apply(x) for v in AUG_VIEWS[1:]]), targets)
        views = [first.relu()[0]] + [v.undo(m) for v, m in zip(AUG_VIEWS[1:], more)]
    else:
        views = [v.undo(_view_map(run, v.apply(x), targets, shifts, first if i == 0 else None))
                 for i, v in enumerate(AUG_VIEWS)]
    return torch.stack([normalised(m) for m in views]).mean(dim=0)


def _signed_full(raw: "torch.Tensor", hw: tuple[int, int]) -> "torch.Tensor":
    """(T, H, W) signed attributions at the image's size, divided by each map's largest |value| (-> [-1, 1])."""
    import torch

    peaks = raw.abs().amax(dim=(1, 2))
    full = resize_maps(raw, hw) / torch.where(peaks > 0, peaks, torch.ones_like(peaks)).view(-1, 1, 1)
    return full.clamp_(-1, 1)


def _heatmaps(bundle: "ModelBundle", out: MapOutput, full, layers: list[str], method: str, shifts: int,
              smooth: frozenset[str], signed: bool = False) -> list[Heatmap]:
    import torch

    logits = out.logits[:1]
    probs = torch.softmax(logits[0], dim=0).cpu().numpy()
    raw = out.maps[0].float()
    peaks = (raw.abs() if signed else torch.relu(raw)).amax(dim=(1, 2))
    raw_np = raw.cpu().numpy().astype(np.float32, copy=False)
    layer = "+".join(layers) or "input"
    smoothed = "+".join(s for s in SMOOTHINGS if s in smooth)
    results = []
    for i, t in enumerate(out.targets):
        if callable(t):  # a score function of the logits: its value stands for the probability
            name, index, score = CUSTOM_TARGET, -1, float(target_scores(logits, t)[0])
        else:
            name, index, score = bundle.classes[int(t)], int(t), float(probs[int(t)])
        results.append(Heatmap(full[i], raw_np[i], float(peaks[i]), name, index, score, probs, layer, method,
                               shifts, smoothed, signed))
    return results


def _options(spec, smooth: frozenset[str], fusion: str, precision: str) -> dict:
    """The compute options of an explanation (see :mod:`.methods`)."""
    from .screen import PRECISIONS

    if fusion not in FUSIONS:
        raise GradCamError(f"fusion must be 'mean' or 'max', not {fusion!r}.")
    if precision not in PRECISIONS:
        raise GradCamError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    options = {"fusion": fusion}
    if "eigen" in smooth:
        options["eigen"] = True
    if spec.extra.get("precision"):
        options["precision"] = precision
    return options


def explain(
    bundle: "ModelBundle",
    image,
    method: str = "gradcam",
    target=None,
    layer=None,
    shifts: int = 1,
    smooth=None,
    fusion: str = "mean",
    precision: str = "auto",
) -> "Heatmap | list[Heatmap]":
    """Explain the model's decision on one image as a heatmap.

    Parameters
    ----------
    image : (H, W) or (H, W, 3|4) array, any dtype.
    method : any name of :func:`list_methods` (CAM family, perturbation CAMs, pixel attributions:
        "gradcam", "layercam", "scorecam", "integrated-gradients", ...).
    target : None (the predicted class), a class name or index, a list of them, "all", or a function
        of the logits ((B, n_classes) tensor -> (B,) scores to explain, e.g. ``lambda z: z[:, 1] - z[:, 0]``;
        its map is named "custom").  All requested classes come from one forward pass.
    layer : a dotted layer name, the module itself, a list of them (their maps are fused), or the
        preset "fine" (the model's last three resolution stages); default the method's own (CAM: the
        layer feeding the pooling head; layercam-fine: "fine") or the model's target layer.  Pixel
        attributions take no layer.
    shifts : 1 (default) or k > 1: average the maps of k x k copies of the input translated by
        fractions of a feature-map cell (one batch of k*k images): a k times finer heatmap whose
        maximum is no longer tied to cell centres.  See :mod:`napari_gradcam.engine.shifts`.
    smooth : None, "aug" (test-time flips and intensity scales, each map moved back before averaging),
        "eigen" (first principal component of the weighted activations) or both ("aug+eigen").
        See :mod:`napari_gradcam.engine.smooth`.
    fusion : how the maps of several layers are combined: "mean" (default; pytorch-grad-cam's: each
        layer's map scaled to [0, 1], averaged on the finest grid) or "max" (LayerCAM's and torchcam's
        element-wise maximum).  See :func:`napari_gradcam.engine.core.fuse_maps`.
    precision : for Score-CAM's one pass per channel: "auto" (default: screened in bfloat16 where the
        hardware computes it natively, recomputed in float32 where the map needs it, estimated error
        below 1/256 of the map's peak), "float32" (every pass) or "bfloat16" (screening even where it
        is emulated).  Other methods compute in float32.  See :mod:`napari_gradcam.engine.screen`.

    Returns
    -------
    Heatmap, or a list of Heatmap (one per class) when ``target`` is a list or "all".
    ``Heatmap.data`` is (H, W) float32 in [0, 1] at the image's own size; for signed methods
    (``Method.signed``: integrated gradients, occlusion, guided backprop, guided Grad-CAM) in [-1, 1],
    divided by the largest absolute value.  Pixel attributions ignore ``layer`` (guided Grad-CAM uses
    it for its Grad-CAM part) and report ``Heatmap.layer == "input"``.
    """
    check_bundle(bundle, "explain")
    spec = get_method(method)
    shifts = check_shifts(shifts)
    if shifts > 1 and spec.family == "attribution":
        raise GradCamError(f"{spec.title} is already computed per input pixel; sub-cell shifts apply to layer maps.")
    chosen = check_smooth(smooth, spec)
    if spec.signed and "aug" in chosen:
        raise GradCamError(f"{spec.title} keeps the sign of its attributions; test-time augmentation ('aug') "
                           "applies to class activation maps.")
    img = check_image(image)
    targets, many = _resolve_targets(bundle, target)
    if targets is not None and any(callable(t) for t in targets) and not spec.score_functions:
        raise GradCamError(f"{spec.title} explains classes, not a function of the logits; use a gradient CAM "
                           "(Grad-CAM, HiResCAM, LayerCAM, ...) for that.")
    layers = resolve_layers(bundle, spec, layer)
    options = _options(spec, chosen, fusion, precision)
    if len(layers) < 2:
        options.pop("fusion")
    run = _Run(spec, bundle, layers, options)
    x = bundle_tensor(bundle, [img]).to(bundle.device)
    bundle.model.eval()
    out = run.compute(x, targets)
    if spec.signed:  # attributions keep their sign: scaled by the largest |value| into [-1, 1]
        full = _signed_full(out.maps[0].float(), img.shape[:2])
    else:
        if "aug" in chosen:
            fine = _aug_map(run, x, out.targets, shifts, out.maps[:1])
        else:
            fine = _view_map(run, x, out.targets, shifts, out.maps[:1])
        if shifts == 1:  # a layer-grid map: divided by its own maximum (the raw map's), then resized
            full = resize_maps(normalised(fine.float()), img.shape[:2]).clamp_(0, 1)
        else:  # an input-grid map: its maximum at the image's size is 1
            full = normalised(resize_maps(fine.float(), img.shape[:2])).clamp_(0, 1)
    full = full.cpu().numpy().astype(np.float32, copy=False)
    results = _heatmaps(bundle, out, full, run.layers, spec.name, shifts, chosen, spec.signed)
    return results if many else results[0]


def feature_maps(bundle: "ModelBundle", image, layer=None, n: int = 36) -> FeatureMaps:
    """The ``n`` most active channels (highest mean activation) of ``layer`` for one image.

    ``layer`` is a dotted name or the module (default the model's target layer); token outputs of
    transformers are shown on their patch grid.

    Returns
    -------
    FeatureMaps with ``maps`` (n, h, w) float32 raw activations, most active first.
    """
    import torch

    check_bundle(bundle, "feature_maps")
    img = check_image(image)
    names = layer_names(bundle, layer) if layer not in (None, "") else [default_layer(bundle)]
    if len(names) != 1:
        raise GradCamError(f"Feature maps show one layer at a time, not {len(names)}.")
    layer = names[0]
    n = check_int(n, "The number of feature maps", 1)
    x = bundle_tensor(bundle, [img]).to(bundle.device)
    bundle.model.eval()
    with torch.inference_mode(), capture(bundle.model, layer, stop=True) as box:
        try:
            bundle.model(x)
        except StopForward:
            pass
    act = box.activation[0].float()
    check_maps(bundle, act, "feature", layer, x)
    scores = act.mean(dim=(1, 2))
    order = torch.argsort(scores, descending=True)[: min(n, act.shape[0])]
    return FeatureMaps(act[order].cpu().numpy(), order.cpu().numpy(), scores[order].cpu().numpy(), layer)

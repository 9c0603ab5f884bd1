"""explain(): images in, heatmaps out, as a short pipeline of named steps.

1. :func:`_check_request`: the method, shifts, smoothing and targets checked against each other;
2. the images (one, a list or an (N, H, W[, C]) stack) -> one (N, C, S, S) network batch;
3. :meth:`_Run.compute`: the method's maps for the whole batch in one call (the registry read once);
4. :func:`_grid_maps`: each image's maps on their grid (sub-cell shifts and test-time views where asked),
   normalised;
5. :func:`_heatmaps`: the results, each with its grid's placement on its image (:class:`.result.Heatmap`);
   nothing is upsampled to the image's size unless ``Heatmap.data`` is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import GradCamError
from ..numerics import check_logits, check_maps
from ..preprocess import bundle_tensor, check_image, resize_maps, split_batch
from ..validate import check_bundle
from .layer_choice import resolve_layers
from .methods import MapOutput, Method, get_method, target_scores
from .methods.gradient.family import FUSIONS
from .methods.perturbation.scorecam import PRECISIONS
from .result import Heatmap, placement
from .shifts import check_shifts, shift_offsets, shifted_inputs, unshift_average
from .smooth import AUG_VIEWS, check_smooth, normalised

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


def check_finite_output(bundle: "ModelBundle", out: "MapOutput", method: str, layer: str | None, x) -> None:
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
        check_finite_output(self.bundle, out, self.spec.name, "+".join(self.layers) or None, x)
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


def _options(spec: Method, smooth: frozenset[str], fusion: str, precision: str, n_layers: int) -> dict:
    """The compute options of an explanation (see :mod:`.methods.registry`)."""
    if fusion not in FUSIONS:
        raise GradCamError(f"fusion must be 'mean' or 'max', not {fusion!r}.")
    if precision not in PRECISIONS:
        raise GradCamError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    options = {"fusion": fusion} if n_layers > 1 else {}
    if "eigen" in smooth:
        options["eigen"] = True
    if spec.extra.get("precision"):
        options["precision"] = precision
    return options


def _check_request(bundle: "ModelBundle", method: str, target, shifts, smooth) -> tuple:
    """(method, shifts, smoothing set, targets or None, whether a list per image is wanted), checked
    against each other: one sentence for a combination that has no meaning."""
    spec = get_method(method)
    shifts = check_shifts(shifts)
    if shifts > 1 and spec.family == "attribution":
        raise GradCamError(f"{spec.title} is already computed per input pixel; sub-cell shifts apply to layer maps.")
    chosen = check_smooth(smooth, spec)
    if spec.signed and "aug" in chosen:
        raise GradCamError(f"{spec.title} keeps the sign of its attributions; test-time augmentation ('aug') "
                           "applies to class activation maps.")
    targets, many = _resolve_targets(bundle, target)
    if targets is not None and any(callable(t) for t in targets) and not spec.score_functions:
        raise GradCamError(f"{spec.title} explains classes, not a function of the logits; use a gradient CAM "
                           "(Grad-CAM, HiResCAM, LayerCAM, ...) for that.")
    return spec, shifts, chosen, targets, many


def _image_targets(out: MapOutput, targets, b: int) -> list:
    """What image ``b``'s maps explain: the targets asked for, or its own predicted class."""
    return list(out.targets) if targets is not None else [int(out.logits[b].argmax())]


def _grid_maps(run: _Run, x: "torch.Tensor", out: MapOutput, b: int, targets, shifts: int,
               smooth: frozenset[str], hw: tuple[int, int]) -> "torch.Tensor":
    """Image ``b``'s (T, h, w) maps on their grid, normalised: signed maps divided by their largest
    |value| (in [-1, 1]); layer maps (with test-time views where asked) by their maximum (in [0, 1]);
    with ``shifts > 1`` the shifted copies' average at the image's size (H, W), divided by its maximum there."""
    first = out.maps[b: b + 1]
    if run.spec.signed:
        raw = first[0].float()
        peaks = raw.abs().amax(dim=(1, 2))
        return (raw / torch_where_positive(peaks).view(-1, 1, 1)).clamp_(-1, 1)
    xb, used = x[b: b + 1], _image_targets(out, targets, b)
    fine = (_aug_map if "aug" in smooth else _view_map)(run, xb, used, shifts, first)
    if shifts == 1:
        return normalised(fine.float())
    return normalised(resize_maps(fine.float(), hw)).clamp_(0, 1)


def torch_where_positive(values: "torch.Tensor") -> "torch.Tensor":
    """``values`` with zeros replaced by ones (a safe divisor)."""
    import torch

    return torch.where(values > 0, values, torch.ones_like(values))


def _heatmaps(bundle: "ModelBundle", run: _Run, out: MapOutput, b: int, grid: "torch.Tensor",
              hw: tuple[int, int], shifts: int, smooth: frozenset[str], targets) -> list[Heatmap]:
    """Image ``b``'s Heatmap per target: its grid maps placed on the image, its scores and metadata."""
    import torch

    spec, logits = run.spec, out.logits[b: b + 1]
    probs = torch.softmax(logits[0], dim=0).cpu().numpy()
    raw = out.maps[b].float()
    peaks = (raw.abs() if spec.signed else torch.relu(raw)).amax(dim=(1, 2))
    raw_np = raw.cpu().numpy().astype(np.float32, copy=False)
    coarse = grid.cpu().numpy().astype(np.float32, copy=False)
    scale, offset = placement(coarse.shape[-2:], hw)
    results = []
    for i, t in enumerate(_image_targets(out, targets, b)):
        if callable(t):  # a score function of the logits: its value stands for the probability
            name, index, score = CUSTOM_TARGET, -1, float(target_scores(logits, t)[0])
        else:
            name, index, score = bundle.classes[int(t)], int(t), float(probs[int(t)])
        results.append(Heatmap(
            raw=raw_np[i], max=float(peaks[i]), target=name, target_index=index, score=score, probabilities=probs,
            method=spec.name, shifts=shifts, signed=spec.signed, coarse=coarse[i], layers=tuple(run.layers),
            smoothing=smooth, family=spec.family, scale=scale, offset=offset, image_shape=hw))
    return results


def _image_heatmaps(run: _Run, x: "torch.Tensor", out: MapOutput, b: int, hw: tuple[int, int], targets,
                    shifts: int, smooth: frozenset[str]) -> list[Heatmap]:
    """Image ``b``'s heatmaps, one per target: its maps on their grid (:func:`_grid_maps`), placed."""
    grid = _grid_maps(run, x, out, b, targets, shifts, smooth, hw)
    return _heatmaps(run.bundle, run, out, b, grid, hw, shifts, smooth, targets)


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
):  # -> Heatmap | list[Heatmap] | list[Heatmap | list[Heatmap]]
    """Explain the model's decision on an image (or a batch of images) as heatmaps.

    Parameters
    ----------
    image : (H, W) or (H, W, 3|4) array, any dtype; or a batch: a list (or tuple) of such arrays, any
        sizes, explained in one batched pass of the network (an (N, H, W[, C]) stack: :func:`explain_batch`,
        or ``list(stack)``; a stack given as ``image`` is refused, as one image is expected there).
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
        element-wise maximum).  See :func:`napari_gradcam.engine.methods.gradient.fuse_maps`.
    precision : for Score-CAM's one pass per channel: "auto" (default: screened in bfloat16 where the
        hardware computes it natively, recomputed in float32 where the map needs it, estimated error
        below 1/256 of the map's peak), "float32" (every pass) or "bfloat16" (screening even where it
        is emulated).  Other methods compute in float32.  See :mod:`napari_gradcam.engine.methods.perturbation.scorecam`.

    Returns
    -------
    Heatmap, or a list of Heatmap (one per class) when ``target`` is a list or "all"; for a batch, a
    list with that result for each image (``target=None``: each image's own predicted class).
    ``Heatmap.coarse`` is the map on its grid with its placement on the image (``scale``, ``offset``);
    ``Heatmap.data`` (computed when first read) is (H, W) float32 in [0, 1] at the image's own size;
    for signed methods (``Method.signed``: integrated gradients, occlusion, guided backprop, guided
    Grad-CAM) in [-1, 1], divided by the largest absolute value.  Pixel attributions ignore ``layer`` (guided Grad-CAM uses
    it for its Grad-CAM part) and report ``Heatmap.layer == "input"`` (``layers == ()``).
    """
    check_bundle(bundle, "explain")
    spec, shifts, chosen, targets, many = _check_request(bundle, method, target, shifts, smooth)
    batched = isinstance(image, (list, tuple))
    images = split_batch(image)[0] if batched else [check_image(image)]
    layers = resolve_layers(bundle, spec, layer)
    run = _Run(spec, bundle, layers, _options(spec, chosen, fusion, precision, len(layers)))
    x = bundle_tensor(bundle, images).to(bundle.device)
    bundle.model.eval()
    out = run.compute(x, targets)
    per_image = [_image_heatmaps(run, x, out, b, tuple(img.shape[:2]), targets, shifts, chosen)
                 for b, img in enumerate(images)]
    results = per_image if many else [maps[0] for maps in per_image]
    return results if batched else results[0]


def explain_batch(bundle: "ModelBundle", images, method: str = "gradcam", target=None, layer=None, shifts: int = 1,
                  smooth=None, fusion: str = "mean", precision: str = "auto") -> list:
    """:func:`explain` for a batch: ``images`` a list of (H, W[, C]) arrays (any sizes) or an
    (N, H, W) / (N, H, W, 3|4) stack (numpy or lazy; each image is read when its batch is made).

    Returns a list with, for each image, what :func:`explain` returns for it (a Heatmap, or a list of
    them when ``target`` is a list or "all"; ``target=None``: each image's own predicted class), from one
    batched pass of the network.
    """
    items, _ = split_batch(images)
    return explain(bundle, list(items), method, target, layer, shifts, smooth, fusion, precision)

"""Score-CAM, whole: masks from the layer's channels, one pass per mask, softmax channel weights, and
the bfloat16 screening of those passes.

Score-CAM (Wang et al., "Score-CAM: Score-weighted visual explanations for convolutional neural
networks", CVPR-W 2020): each channel, upsampled to the input and scaled to [0, 1], masks the input;
``w_k = softmax_k(y_c(x * M_k))`` over the channels (the logits, as pytorch-grad-cam computes it); the
map is ``ReLU(sum_k w_k A_k)``.  K passes; channels that are constant give the same all-zero mask and are
run once; the passes run on an inference copy of the model (BatchNorm folded, channels-last on a CPU;
:mod:`.model_cut`) where it gives the model's own logits.

Precision.
Score-CAM runs the network once per channel of the explained layer (512 passes for resnet18's
``layer4``) and uses the logits of those passes only through a softmax over the channels.  With
``precision="auto"`` on hardware that computes bfloat16 natively (CPUs with AVX512-BF16 or AMX, GPUs
that support it) every pass first runs under bfloat16 autocast, 2-3x faster; then, in float32:

1. A fixed random sample of channels (one batch, at least 16) measures the bfloat16 error of the logits,
   ``delta_k = s16_k - s32_k``.  Its mean is a shift common to all channels (the softmax ignores it,
   but it would tilt the float32 channels against the rest), so it is removed from the channels left
   in bfloat16; what remains, ``eps_k``, has a spread ``sigma`` (root mean square of every measured
   ``eps``, updated as more channels are measured).
2. To first order, the map ``M = sum_k w_k A_k`` (``w = softmax(s)``) moves by
   ``dM(x) = sum_k w_k eps_k (A_k(x) - M(x))`` over the channels still in bfloat16; with independent
   ``eps_k`` its standard deviation is ``sigma * sqrt(sum_k w_k^2 (A_k(x) - M(x))^2)``.
3. While four of those standard deviations exceed :data:`TOLERANCE` of the map's peak (1/256: one step
   of an 8-bit colour map), the next batch of channels of largest weight is recomputed in float32; at
   worst every channel is, which is the float32 result.

``precision="float32"`` runs every pass in float32 (the reference result, the plain loop's).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable, Sequence

from ....errors import ParameterError
from ..registry import MapOutput, Method, register
from .model_cut import close_logits, inference_copy
from .passes import _chunk, one_layer, per_image_maps

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from ....bundle import ModelBundle

PRECISIONS = ("auto", "float32", "bfloat16")
TOLERANCE = 1 / 256  # estimated map error (4 standard deviations) allowed, relative to the map's peak
SIGMAS = 4.0
SAMPLE = 16  # channels at least in the random sample that measures the bfloat16 error


@functools.lru_cache(maxsize=None)
def _cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX; Linux flags), not emulated."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def native_bfloat16(device: "torch.device") -> bool:
    """Whether ``device`` runs bfloat16 faster than float32 (natively)."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and _cpu_has_native_bfloat16()


def resolve_precision(precision: str, device: "torch.device") -> str:
    """"auto" | "float32" | "bfloat16" -> the precision the screening passes run in."""
    if precision not in PRECISIONS:
        raise ParameterError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


def map_error(weights: "torch.Tensor", act: "torch.Tensor", pending: "torch.Tensor",
              sigma: "torch.Tensor") -> "torch.Tensor":
    """Estimated error of each map, relative to its peak: (T,) float32.

    weights (T, K) softmax weights; act (K, h, w) the channels; pending (K,) bool, the channels still
    in bfloat16; sigma (T,) the spread of their logit errors.  See the module docstring (step 2).
    """
    import torch

    a = act.float()
    left = a[pending]  # (P, h, w)
    errors = []
    for t in range(weights.shape[0]):  # one map at a time: memory (P, h, w), whatever the number of classes
        m = torch.einsum("k,khw->hw", weights[t], a)
        std = torch.einsum("p,phw->hw", weights[t, pending].square(), (left - m).square()).amax().sqrt()
        errors.append(SIGMAS * sigma[t] * std / m.abs().amax().clamp_min(1e-30))
    return torch.stack(errors)


def refine(scores: "torch.Tensor", exact: "torch.Tensor", act: "torch.Tensor", wanted: Sequence[int],
           recompute: "Callable[[torch.Tensor], torch.Tensor]", step: int,
           tolerance: float = TOLERANCE) -> tuple["torch.Tensor", int]:
    """Screened scores made float32 where the maps of ``wanted`` need it (module docstring).

    scores (K, n) float32 logits, bfloat16-computed except the rows where ``exact`` (K,) bool;
    act (K, h, w) the layer's channels; recompute(idx (m,) long) -> (m, n) float32 logits.
    Returns the scores (K, n) and the number of channels recomputed in float32.
    """
    import torch

    s, pending = scores.clone(), ~exact
    cols = torch.as_tensor(list(wanted), dtype=torch.long)
    candidates = torch.nonzero(pending).flatten()
    generator = torch.Generator().manual_seed(0)  # the same sample every run: reproducible maps
    picked = torch.randperm(len(candidates), generator=generator)[: max(step, SAMPLE)]
    sample = candidates[picked.to(candidates.device)]
    measured = _measure(s, pending, sample, cols, recompute)
    shift = measured.mean(dim=0)  # (T,)
    rows = torch.nonzero(pending).flatten()
    s[rows[:, None], cols] -= shift
    residuals = [measured - shift]
    done = len(sample)
    while pending.any():
        sigma = torch.cat(residuals).square().mean(dim=0).sqrt()
        weights = torch.softmax(s[:, cols].T, dim=1)
        if bool((map_error(weights, act, pending, sigma) <= tolerance).all()):
            break
        rank = weights.amax(dim=0).masked_fill(~pending, -1.0)
        heavy = torch.argsort(rank, descending=True)[: min(step, int(pending.sum()))]
        residuals.append(_measure(s, pending, heavy, cols, recompute))
        done += len(heavy)
    return s, done


def _measure(s: "torch.Tensor", pending: "torch.Tensor", idx: "torch.Tensor", cols: "torch.Tensor",
             recompute: "Callable[[torch.Tensor], torch.Tensor]") -> "torch.Tensor":
    """Recompute rows ``idx`` of ``s`` in float32 (in place, marked done); their errors (m, T) in ``cols``."""
    exact = recompute(idx)
    error = s[idx][:, cols] - exact[:, cols]
    s[idx] = exact
    pending[idx] = False
    return error


# ----------------------------------------------------------------------------- the passes
def _unit_masks(act: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
    """(c, h, w) channels -> (c, H, W) masks: upsampled (bilinear, corners aligned), scaled to [0, 1]."""
    import torch.nn.functional as F

    up = F.interpolate(act[None].float(), size=size, mode="bilinear", align_corners=True)[0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    return (up - lo) / (hi - lo + 1e-8)


def _scoring_copy(model: "nn.Module", x: "torch.Tensor", reference: "torch.Tensor"):
    """(model for the passes, its memory format, the logits of an all-zero input (n,) float32).

    The :func:`.model_cut.inference_copy` (BatchNorm folded, channels-last on a CPU), checked against
    ``reference`` (the logits of ``x``); the model itself where they differ."""
    import torch

    fast = inference_copy(model, channels_last=x.device.type == "cpu")
    memory = torch.channels_last if fast is not model and x.device.type == "cpu" else torch.contiguous_format
    with torch.inference_mode():
        check = fast(torch.cat([x, torch.zeros_like(x)]).contiguous(memory_format=memory)).float()
        if not close_logits(check[:1], reference[None]):
            fast, memory = model, torch.contiguous_format
            check = fast(torch.zeros_like(x)).float()
    return fast, memory, check[-1]


def masked_scores(model: "nn.Module", x: "torch.Tensor", act: "torch.Tensor", reference: "torch.Tensor",
                  wanted: "Sequence[int] | None" = None, precision: str = "float32") -> "torch.Tensor":
    """Logits of the input masked by each channel: (K, n_classes) float32.

    x (1, C, S, S); act (K, h, w) the layer's output; reference (n_classes,) the logits of ``x``.
    Constant channels (all-zero masks) run once.  ``precision`` "float32" runs every pass in float32;
    "auto" / "bfloat16" screen in bfloat16 and recompute in float32 what the maps of the classes
    ``wanted`` (default: the predicted one) need (see the module docstring).
    """
    import torch

    size = tuple(x.shape[-2:])
    flat = act.flatten(1)
    constant = (flat.amax(dim=1) - flat.amin(dim=1)) == 0
    varying = torch.nonzero(~constant).flatten()
    fast, memory, blank = _scoring_copy(model, x, reference)
    step = _chunk(x.device, x[0].numel() * 4, 64 << 20, 1, 16)

    def logits(idx: "torch.Tensor", low: bool = False) -> "torch.Tensor":
        out = [torch.empty(0, reference.shape[0], device=x.device)]
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=low):
            for i in range(0, len(idx), step):
                batch = (x * _unit_masks(act[idx[i: i + step]], size)[:, None]).contiguous(memory_format=memory)
                out.append(fast(batch).float())
        return torch.cat(out)

    scores = torch.empty(act.shape[0], reference.shape[0], device=x.device)
    scores[constant] = blank
    if resolve_precision(precision, x.device) == "float32" or len(varying) == 0:
        scores[varying] = logits(varying)
        return scores
    scores[varying] = logits(varying, low=True)
    wanted = [int(reference.argmax())] if wanted is None else wanted
    return refine(scores, constant, act, wanted, logits, step)[0]


def score_cam_maps(bundle: "ModelBundle", x: "torch.Tensor", targets, layer: str,
                   precision: str = "auto") -> MapOutput:
    """Score-CAM maps (B, T, h, w) for a batch (each image's own passes; ``precision`` as in
    :func:`masked_scores`)."""
    import torch

    def weights(b, logits, _output, acts, wanted):
        scores = masked_scores(bundle.model, x[b: b + 1], acts[b], logits[b], wanted, precision)
        return torch.softmax(scores[:, wanted].T, dim=1)

    return per_image_maps(bundle, x, targets, layer, weights)


def _score_compute(bundle, x, targets, layers, precision: str = "auto", **_options) -> MapOutput:
    return score_cam_maps(bundle, x, targets, one_layer("Score-CAM", layers), precision)


register(Method(
    "scorecam", "Score-CAM", "cam",
    "channel weights = softmax of the class score of the input masked by each channel "
    "(one pass per channel, batched, no gradients)",
    _score_compute, aliases=("score-cam",), extra={"slow": True, "precision": True},
))

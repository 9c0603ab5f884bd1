"""Many-pass scores screened in bfloat16, recomputed in float32 where they matter.

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

from ..errors import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    import torch

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

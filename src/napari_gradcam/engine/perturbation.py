"""Perturbation CAMs: channel weights from how the class score reacts when the input or the layer changes.

No gradients: every pass runs under ``torch.inference_mode`` in batches, and all target classes
come from the same passes.  The map is ``ReLU(sum_k w_k A_k)`` with ``A`` (K, h, w) the named layer's
own output (taken before any in-place operation after it), like every CAM here; token and channels-last
outputs (vision transformers) are read on their grid (:mod:`.layout`).

* Score-CAM (Wang et al., "Score-CAM: Score-weighted visual explanations for convolutional neural
  networks", CVPR-W 2020): each channel, upsampled to the input and scaled to [0, 1], masks the input;
  ``w_k = softmax_k(y_c(x * M_k))`` over the channels (the logits, as pytorch-grad-cam computes it).
  K passes; channels that are constant give the same all-zero mask and are run once.  By default the
  passes are screened in bfloat16 where the hardware computes it natively and recomputed in float32
  where the map needs it (estimated error below 1/256 of its peak; see :mod:`.screen`);
  ``precision="float32"`` runs them all in float32.
* Ablation-CAM (Desai & Ramaswamy, "Ablation-CAM: Visual explanations for deep convolutional network
  via gradient-free localization", WACV 2020): ``w_k = (y_c - y_c^k) / y_c`` with ``y_c^k`` the logit
  when channel k of the layer is set to zero (at every position; in every token, the class token too).
  Only the layers after the named layer run, on the cached
  activation (the model is cut with ``torch.fx``; see :mod:`.split`), else whole passes with a hook.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from ..errors import GradCamError, LayerError
from .layout import describe, layout_of, to_spatial
from .methods import MapOutput, Method, register

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from ..bundle import ModelBundle


@contextmanager
def layer_output(model: "nn.Module", layer: str,
                 replace: "Callable[[torch.Tensor], torch.Tensor] | None" = None) -> Iterator[list]:
    """Hook ``layer`` for the block: the list yielded receives a copy of each output, in the layer's own
    layout (a map (B, K, h, w), channels-last (B, h, w, K) or tokens (B, N, K): :mod:`.layout`).

    ``replace(output)`` (optional) gives the tensor passed on instead.  The copy is taken before any
    in-place operation after the layer; the hook acts in this thread only and is removed on exit.
    """
    import torch

    from ..models import get_module

    module = get_module(model, layer)
    seen: list = []
    owner = threading.get_ident()

    def hook(_module, _inputs, output):
        if threading.get_ident() != owner:
            return None
        if not isinstance(output, torch.Tensor) or layout_of(output, min_cells=1) is None:
            raise LayerError(f"Layer {layer!r} outputs {describe(output)}, which holds no spatial grid (a map "
                             "(B, K, h, w), channels-last or tokens); pick a layer before the pooling.")
        seen.append(output.detach().clone())
        return replace(output) if replace is not None else None

    handle = module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _forward(model: "nn.Module", x: "torch.Tensor", layer: str) -> tuple["torch.Tensor", "torch.Tensor"]:
    """One pass: logits (B, n) float32 and the layer's own output, in its layout (:func:`layer_output`)."""
    import torch

    with torch.inference_mode(), layer_output(model, layer) as seen:
        logits = model(x)
    if not seen:
        raise GradCamError(f"Layer {layer!r} was not used in the forward pass; pick another layer.")
    return logits.float(), seen[0]


def _chunk(device: "torch.device", per_item: int, budget: int, lo: int, hi: int) -> int:
    """Items per batch: ``budget`` bytes of ``per_item`` each, within [lo, hi] (more on a GPU)."""
    if device.type != "cpu":
        budget, hi = budget * 8, hi * 8
    return int(min(hi, max(lo, budget // max(1, per_item))))


def _targets_for(logits: "torch.Tensor", targets: "Sequence[int] | None") -> list[int]:
    return [int(t) for t in targets] if targets is not None else [int(logits.argmax())]


def _spatial(output: "torch.Tensor") -> "torch.Tensor":
    """A layer's output in its own layout -> (B, K, h, w) (:func:`.layout.to_spatial`)."""
    return to_spatial(output, layout_of(output, min_cells=1))


def _channel_axis(output: "torch.Tensor") -> int:
    """The channel axis of a layer's output: 1 for a map (B, K, h, w), the last for channels-last or tokens."""
    return 1 if layout_of(output, min_cells=1).kind == "nchw" else output.ndim - 1


def _weighted_maps(act: "torch.Tensor", weights: "torch.Tensor") -> "torch.Tensor":
    """act (K, h, w), weights (T, K) -> ReLU(sum_k w_k A_k) (T, h, w) float32."""
    import torch

    return torch.relu(torch.einsum("tk,khw->thw", weights.float(), act.float()))


# ----------------------------------------------------------------------------- Score-CAM
def _unit_masks(act: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
    """(c, h, w) channels -> (c, H, W) masks: upsampled (bilinear, corners aligned), scaled to [0, 1]."""
    import torch.nn.functional as F

    up = F.interpolate(act[None].float(), size=size, mode="bilinear", align_corners=True)[0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    return (up - lo) / (hi - lo + 1e-8)


def _scoring_copy(model: "nn.Module", x: "torch.Tensor", reference: "torch.Tensor"):
    """(model for the passes, its memory format, the logits of an all-zero input (n,) float32).

    The :func:`.split.inference_copy` (BatchNorm folded, channels-last on a CPU), checked against
    ``reference`` (the logits of ``x``); the model itself where they differ."""
    import torch

    from .split import close_logits, inference_copy

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
    ``wanted`` (default: the predicted one) need (see :mod:`.screen`).
    """
    import torch

    from .screen import refine, resolve_precision

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

    model = bundle.model
    logits, output = _forward(model, x, layer)
    acts = _spatial(output)
    indices = _targets_for(logits[0], targets)
    maps = []
    for b in range(x.shape[0]):
        wanted = indices if targets is not None or b == 0 else _targets_for(logits[b], None)
        scores = masked_scores(model, x[b: b + 1], acts[b], logits[b], wanted, precision)
        weights = torch.softmax(scores[:, wanted].T, dim=1)
        maps.append(_weighted_maps(acts[b], weights))
    return MapOutput(logits, torch.stack(maps), indices)


# ----------------------------------------------------------------------------- Ablation-CAM
def _ablated(act: "torch.Tensor", channels: "torch.Tensor") -> "torch.Tensor":
    """A layer's output for one image (1, ...) in its layout and c channel indices -> c copies (c, ...), copy i
    with channel ``channels[i]`` zeroed everywhere (every position; every token, the class token too)."""
    import torch

    batch = act.expand(len(channels), *act.shape[1:]).clone()
    rows = torch.arange(len(channels), device=act.device)
    if _channel_axis(act) == 1:
        batch[rows, channels] = 0
    else:
        batch[rows, ..., channels] = 0
    return batch


def _ablation_by_tail(model, x, layer: str, act, reference, step: int) -> "torch.Tensor | None":
    """Ablated logits (K, n) from the layers after ``layer`` only; None where the model cannot be cut."""
    import torch

    from .split import batched, close_logits, inference_copy, split_after

    split = split_after(model, layer)
    if split is None:
        return None
    k = act.shape[_channel_axis(act)]
    try:
        with torch.inference_mode():
            cut_act, *saved = split.prefix(x)
            if cut_act.shape != act.shape or not close_logits(cut_act.flatten(1), act.flatten(1), 1e-4):
                return None
            tail = split.tail  # BatchNorm folded where there is one (a copy: only worth it then)
            if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in tail.modules()):
                tail = inference_copy(tail, channels_last=False)
            out = []
            for i in range(0, k, step):
                chunk = torch.arange(i, min(k, i + step), device=x.device)
                batch = _ablated(act, chunk)
                if i == 0:  # the intact activation first: the cut must give the model's own logits
                    batch = torch.cat([act, batch])
                logits = tail(batch, *batched(tuple(saved), len(batch))).float()
                if i == 0:
                    if not close_logits(logits[:1], reference[None]):
                        return None
                    logits = logits[1:]
                out.append(logits)
    except Exception:  # noqa: BLE001 - a cut that does not run batched: whole passes instead
        return None
    return torch.cat(out)


def _ablation_by_hook(model, x, layer: str, act, step: int) -> "torch.Tensor":
    """Ablated logits (K, n) from whole passes, the layer's output replaced by a hook."""
    import torch

    k = act.shape[_channel_axis(act)]
    out = []
    with torch.inference_mode():
        for i in range(0, k, step):
            chunk = torch.arange(i, min(k, i + step), device=x.device)
            batch = _ablated(act, chunk)
            with layer_output(model, layer, replace=lambda _o, b=batch: b):
                out.append(model(x.expand(len(chunk), *x.shape[1:])).float())
    return torch.cat(out)


def ablated_scores(model: "nn.Module", x: "torch.Tensor", layer: str, act: "torch.Tensor",
                   reference: "torch.Tensor") -> tuple["torch.Tensor", str]:
    """Logits with each channel of ``layer`` zeroed: (K, n_classes) float32, and "tail" or "full" (how).

    x (1, C, S, S); act the layer's output for x, in its layout ((1, K, h, w), channels-last or tokens);
    reference (n_classes,) the logits of x.
    """
    step = _chunk(x.device, act[0].numel() * 4, 32 << 20, 4, 128)
    scores = _ablation_by_tail(model, x, layer, act, reference, step)
    if scores is not None:
        return scores, "tail"
    return _ablation_by_hook(model, x, layer, act, step), "full"


def ablation_cam_maps(bundle: "ModelBundle", x: "torch.Tensor", targets, layer: str) -> MapOutput:
    """Ablation-CAM maps (B, T, h, w) for a batch (each image's own ablations)."""
    import torch

    model = bundle.model
    logits, output = _forward(model, x, layer)
    acts = _spatial(output)
    indices = _targets_for(logits[0], targets)
    maps = []
    for b in range(x.shape[0]):
        scores, _how = ablated_scores(model, x[b: b + 1], layer, output[b: b + 1], logits[b])
        wanted = indices if targets is not None or b == 0 else _targets_for(logits[b], None)
        original = logits[b, wanted]
        safe = torch.where(original.abs() > 1e-12, original, torch.full_like(original, 1e-12))
        weights = (original[:, None] - scores[:, wanted].T) / safe[:, None]
        maps.append(_weighted_maps(acts[b], weights))
    return MapOutput(logits, torch.stack(maps), indices)


# ----------------------------------------------------------------------------- registry
def _one_layer(title: str, layers: Sequence[str]) -> str:
    if len(layers) != 1:
        raise LayerError(f"{title} is computed at one layer; {len(layers)} were given.")
    return layers[0]


def _score_compute(bundle, x, targets, layers, precision: str = "auto", **_options) -> MapOutput:
    return score_cam_maps(bundle, x, targets, _one_layer("Score-CAM", layers), precision)


def _ablation_compute(bundle, x, targets, layers, **_options) -> MapOutput:
    return ablation_cam_maps(bundle, x, targets, _one_layer("Ablation-CAM", layers))


register(Method(
    "scorecam", "Score-CAM", "cam",
    "channel weights = softmax of the class score of the input masked by each channel "
    "(one pass per channel, batched, no gradients)",
    _score_compute, aliases=("score-cam",), extra={"slow": True, "precision": True},
))
register(Method(
    "ablationcam", "Ablation-CAM", "cam",
    "channel weights = relative drop of the class score when the channel is zeroed "
    "(only the layers after the target layer re-run)",
    _ablation_compute, aliases=("ablation-cam",),
))

"""Ablation-CAM (Desai & Ramaswamy, "Ablation-CAM: Visual explanations for deep convolutional network via
gradient-free localization", WACV 2020): ``w_k = (y_c - y_c^k) / y_c`` with ``y_c^k`` the logit when
channel k of the layer is set to zero (at every position; in every token, the class token too); the map
is ``ReLU(sum_k w_k A_k)``.  Only the layers after the named layer run, on the cached activation (the
model is cut with ``torch.fx``; see :mod:`.model_cut`), else whole passes with a hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import MapOutput, Method, register
from . import model_cut
from .model_cut import batched, close_logits, inference_copy
from .passes import _channel_axis, _chunk, layer_output, one_layer, per_image_maps

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from ....bundle import ModelBundle


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

    split = model_cut.split_after(model, layer)
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

    def weights(b, logits, output, _acts, wanted):
        scores, _how = ablated_scores(bundle.model, x[b: b + 1], layer, output[b: b + 1], logits[b])
        original = logits[b, wanted]
        safe = torch.where(original.abs() > 1e-12, original, torch.full_like(original, 1e-12))
        return (original[:, None] - scores[:, wanted].T) / safe[:, None]

    return per_image_maps(bundle, x, targets, layer, weights)


def _ablation_compute(bundle, x, targets, layers, **_options) -> MapOutput:
    return ablation_cam_maps(bundle, x, targets, one_layer("Ablation-CAM", layers))


register(Method(
    "ablationcam", "Ablation-CAM", "cam",
    "channel weights = relative drop of the class score when the channel is zeroed "
    "(only the layers after the target layer re-run)",
    _ablation_compute, aliases=("ablation-cam",),
))

"""Finding the layers that matter from the module itself, for any ``nn.Module`` classifier.

* :func:`default_target_layer`: the last module whose output is a spatial map (B, K, h, w) with more
  than one position, before the global pooling (adaptive pooling layers themselves are left out).
* :func:`find_cam_head`: whether the logits are ``Linear(GAP(A))`` (optionally ``Linear(GAP(ReLU(A)))``)
  of a layer's output A, checked numerically on one random input; dropout and flattening in between
  are fine because the check compares values, not module types.

Both trace one forward pass of a random (1, C, S, S) image with hooks on every module; the result is
cached per model object (and input geometry), so a bundle pays for it once.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import LayerError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from ..models import CamHead

_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[Any, Any]]" = weakref.WeakKeyDictionary()


@dataclass
class ModuleCall:
    """One module's call in a traced forward pass (in the order the calls finished)."""

    name: str
    module: "nn.Module"
    inputs: tuple
    output: Any


def _snapshot(output: Any) -> Any:
    """A copy of a tensor output, so that in-place operations after the module (DenseNet's
    ``relu(inplace=True)``) cannot change what was recorded."""
    return output.clone() if hasattr(output, "clone") else output


def trace_calls(model: "nn.Module", in_channels: int, input_size: int) -> tuple[list[ModuleCall], "torch.Tensor"]:
    """Every named module's call for one random (1, in_channels, input_size, input_size) image.

    Returns the calls in the order they finished (a container after its children), each with a copy
    of its output, and the model's output.  The model is run in eval mode under ``inference_mode``; its mode is restored.
    """
    import torch

    calls: list[ModuleCall] = []
    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: calls.append(ModuleCall(name, m, i, _snapshot(o)))))
    was_training = model.training
    try:
        model.eval()
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, in_channels, input_size, input_size, generator=gen).to(device)
        with torch.inference_mode():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return calls, out


def _is_spatial(call: ModuleCall) -> bool:
    from torch import nn

    out = call.output
    if not hasattr(out, "ndim") or out.ndim != 4 or out.shape[-1] * out.shape[-2] <= 1:
        return False
    return not isinstance(call.module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))


def _cached(model: "nn.Module", key: tuple, compute):
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        per_model[key] = compute()
    return per_model[key]


def default_target_layer(model: "nn.Module", in_channels: int, input_size: int) -> str:
    """Dotted name of the last module with a spatial (B, K, h, w) output (h * w > 1).

    Where a container and its last child return the same tensor, the container is named
    (``layer4`` rather than ``layer4.1.relu``), as users and the registry call it.
    Raises LayerError when the model has no such layer.
    """
    def compute() -> str:
        calls, _ = trace_calls(model, in_channels, input_size)
        spatial = [c for c in calls if _is_spatial(c)]
        if not spatial:
            raise LayerError("The model has no layer with a spatial (B, K, h, w) output to explain; "
                             "give the layer to explain by name.")
        return spatial[-1].name

    return _cached(model, ("layer", in_channels, input_size), compute)


def find_cam_head(model: "nn.Module", layer: str, in_channels: int, input_size: int) -> "CamHead | None":
    """The global-average-pooling + linear head on top of ``layer``, or None.

    The head is the last ``nn.Linear`` whose output equals the model's logits; it qualifies when its
    input equals the spatial mean of ``layer``'s output (or of its ReLU) on a random image.
    """
    from ..models import CamHead

    def compute() -> "CamHead | None":
        import torch
        from torch import nn

        calls, logits = trace_calls(model, in_channels, input_size)
        feats = [c.output for c in calls if c.name == layer and hasattr(c.output, "ndim") and c.output.ndim == 4]
        if not feats or not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            return None
        act = feats[-1].float()
        heads = [c for c in calls if isinstance(c.module, nn.Linear) and c.output.shape == logits.shape
                 and torch.allclose(c.output.float(), logits.float(), rtol=1e-4, atol=1e-5)]
        if not heads:
            return None
        head = heads[-1]
        pooled_in = head.inputs[0].float().reshape(1, -1)
        for relu in (False, True):
            pooled = (act.relu() if relu else act).mean(dim=(2, 3)).reshape(1, -1)
            if pooled.shape == pooled_in.shape and torch.allclose(pooled, pooled_in, rtol=1e-4, atol=1e-5):
                return CamHead(layer, head.name, relu)
        return None

    return _cached(model, ("cam", layer, in_channels, input_size), compute)

"""Finding the layers that matter from the module itself, for any ``nn.Module`` classifier.

* :func:`default_target_layer`: the last module whose output holds a spatial grid of more than one
  position (a map (B, K, h, w), tokens, channels-last; :mod:`.layout`) and reaches the logits;
  adaptive pooling layers are left out.
* :func:`stage_outputs`: the last module of each resolution stage (the ``layer="fine"`` preset).
* :func:`find_cam_head`: whether the logits are ``Linear(GAP(A))`` (optionally ``Linear(GAP(ReLU(A)))``)
  of a layer's output A, checked numerically on one random input; dropout and flattening in between
  are fine because the check compares values, not module types.

Each traces one pass of a random (1, C, S, S) image with hooks on every module (the layer search
with a backward pass, to see which outputs reach the logits); the result is cached per model object
(and input geometry), so a bundle pays for it once.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import LayerError
from .layout import Layout, layout_of, to_spatial

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


def _is_global_pool(module) -> bool:
    from torch import nn

    return isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))


@dataclass(frozen=True)
class SpatialCall:
    """A module call whose output holds a spatial grid that the logits depend on."""

    name: str
    layout: Layout


def _head_input(calls: list, logits) -> "torch.Tensor | None":
    """The input of the innermost module that returned the logits (the head's features), if any."""
    for module_output, inputs in calls:
        if module_output is logits and inputs and hasattr(inputs[0], "requires_grad") and inputs[0].requires_grad:
            return inputs[0]
    return None


def _influence_trace(model: "nn.Module", in_channels: int, input_size: int) -> list[SpatialCall]:
    """The calls with a spatial output (maps, tokens, channels-last) through which the logits depend
    on more than one position, in the order the calls finished: one forward and one backward pass of
    a random image, gradients w.r.t. every such output (no parameter gradients are kept).

    The gradients are those of a random projection of the head's input (the features the last
    module turns into logits), so a zero-initialised head (torchvision's ViT) hides nothing.
    """
    import torch

    seen: list[tuple[str, Layout, torch.Tensor]] = []
    finished: list[tuple] = []

    def hook(module, inputs, output, name):
        finished.append((output, inputs))
        layout = layout_of(output)
        if layout is None or _is_global_pool(module) or not getattr(output, "requires_grad", False):
            return None
        seen.append((name, layout, output))
        return output.clone()  # in-place operations downstream cannot touch the recorded output

    handles = [m.register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name))
               for name, m in model.named_modules() if name]
    was_training = model.training
    try:
        model.eval()
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, in_channels, input_size, input_size, generator=gen).to(device).requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            if not seen or not isinstance(logits, torch.Tensor) or not logits.requires_grad:
                return []
            feats = _head_input(finished, logits)
            score = logits if feats is None else feats
            weights = torch.rand(score.shape, generator=gen).to(score.device, score.dtype)
            grads = torch.autograd.grad((score * weights).sum(), [t for _, _, t in seen], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [SpatialCall(name, layout) for (name, layout, _), g in zip(seen, grads)
            if g is not None and bool(to_spatial(g, layout).abs().amax() > 0)]


def _cached(model: "nn.Module", key: tuple, compute):
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        per_model[key] = compute()
    return per_model[key]


def spatial_calls(model: "nn.Module", in_channels: int, input_size: int) -> list[SpatialCall]:
    """:func:`_influence_trace`, cached per model and input geometry."""
    return _cached(model, ("calls", in_channels, input_size),
                   lambda: _influence_trace(model, in_channels, input_size))


def default_target_layer(model: "nn.Module", in_channels: int, input_size: int) -> str:
    """Dotted name of the last module whose spatial output the logits depend on.

    A spatial output is a map (B, K, h, w), channels-last (B, h, w, K) or tokens (B, N, D) laid
    out on a grid (:mod:`.layout`), of more than one position; global pooling layers are left out.
    Where a container and its last child return the same tensor, the container is named
    (``layer4`` rather than ``layer4.1.relu``), as users and the registry call it.  For a vision
    transformer whose head reads the class token, this is the last block's first norm (the tokens
    entering its attention): later token outputs do not reach the class token.
    Raises LayerError when the model has no such layer.
    """
    calls = spatial_calls(model, in_channels, input_size)
    if not calls:
        raise LayerError("The model has no layer with a spatial (B, K, h, w) or token output to explain; "
                         "give the layer to explain by name.")
    return calls[-1].name


def stage_outputs(model: "nn.Module", in_channels: int, input_size: int, n: int = 3) -> list[str]:
    """The outputs of the model's last ``n`` resolution stages, finest first.

    A stage is a run of consecutive module calls (in the order they finished) with the same spatial
    grid; its output is the last module of the run, just before the resolution changes.  For
    ResNets that is ``layer2``, ``layer3``, ``layer4``; for a VGG the last ReLU before each pooling.
    A model with one grid (a plain vision transformer) has one stage: its default layer.
    """
    calls = spatial_calls(model, in_channels, input_size)
    if not calls:
        default_target_layer(model, in_channels, input_size)  # raises the LayerError
    ends = [c.name for c, nxt in zip(calls, calls[1:] + [None]) if nxt is None or nxt.layout.grid != c.layout.grid]
    return ends[-n:]


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
        feats = [c.output for c in calls if c.name == layer and layout_of(c.output) is not None]
        if not feats or not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            return None
        act = to_spatial(feats[-1], layout_of(feats[-1])).float()
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

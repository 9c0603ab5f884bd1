"""Finding the layers that matter from the module itself, for any ``nn.Module`` classifier.

* :func:`default_target_layer`: the last module before the head whose output holds a square grid of
  more than one position (a map (B, K, h, h), tokens, channels-last; :mod:`.layout`) and reaches the
  logits; pooling, identity and dropout layers are left out.  The one default-layer finder: bundles
  store its answer (:func:`napari_gradcam.models.default_layer` returns "" where it finds none).
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


def _passes_maps_on(module) -> bool:
    """Global pooling, identity and dropout layers: their output is no new map (a pooled one, or the
    input unchanged in eval mode), so no candidate for a default layer."""
    from torch import nn

    return isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity, nn.modules.dropout._DropoutNd))


@dataclass(frozen=True)
class SpatialCall:
    """A module call whose output holds a spatial grid that the logits depend on."""

    name: str
    layout: Layout


@dataclass
class _Recorded:
    """One module call of :func:`_record`: its first input and its output (before any later in-place change)."""

    name: str
    module: "nn.Module"
    input: Any
    output: Any


def _record(model: "nn.Module", in_channels: int, input_size: int) -> tuple[list[_Recorded], Any, Any]:
    """Every named module's call for one random (1, C, S, S) image, with autograd on.

    Returns the calls in the order they finished, the model's output and the head's features (the
    input of the innermost module that returned the output, or None).  Spatial outputs are passed on
    as copies, so that in-place operations downstream cannot touch the recorded ones.
    """
    import torch

    calls: list[_Recorded] = []

    def hook(module, inputs, output, name):
        calls.append(_Recorded(name, module, inputs[0] if inputs else None, output))
        if layout_of(output) is not None and getattr(output, "requires_grad", False):
            return output.clone()
        return None

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
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    feats = next((c.input for c in calls if c.output is logits and getattr(c.input, "requires_grad", False)), None)
    return calls, logits, feats


def _influential(calls: list[_Recorded], logits, feats) -> set[int]:
    """``id`` of each recorded spatial tensor (a module's input or output; layouts of :mod:`.layout`) through
    which the logits depend on more than one position: gradients of a random projection of the head's
    features (the logits when unknown; a zero-initialised head such as torchvision ViT's then hides
    nothing) with respect to them (no parameter gradients are kept)."""
    import torch

    tensors = {id(t): t for c in calls for t in (c.input, c.output)
               if layout_of(t) is not None and getattr(t, "requires_grad", False)}
    if not tensors or not isinstance(logits, torch.Tensor) or not logits.requires_grad:
        return set()
    score = logits if feats is None else feats
    weights = torch.rand(score.shape, generator=torch.Generator().manual_seed(1)).to(score.device, score.dtype)
    with torch.enable_grad():
        grads = torch.autograd.grad((score * weights).sum(), list(tensors.values()), allow_unused=True)
    return {key for (key, t), g in zip(tensors.items(), grads)
            if g is not None and bool(to_spatial(g, layout_of(t)).abs().amax() > 0)}


def _pooling_internals(calls: list[_Recorded], influential: set[int]) -> list[str]:
    """Names of the modules that pool a grid while keeping its shape (the last attention of a vision
    transformer whose head reads the class token: tokens in, tokens out of which only the class token
    matters) and contain no other module that pools; what they contain (query, key and value
    projections) is part of the pooling, as a pooling layer's work is."""
    pooling = [c.name for c in calls if id(c.input) in influential and id(c.output) not in influential]
    innermost = [n for n in pooling if not any(o.startswith(n + ".") for o in pooling)]
    keep_grid = {c.name for c in calls if layout_of(c.output) is not None}
    return [n for n in innermost if n in keep_grid]


def _head_index(calls: list[_Recorded], logits) -> int:
    """Index of the head's call: the last ``Linear`` or ``Conv2d`` call, where its output has one channel
    per logit (B, n_classes[, h, w]); else ``len(calls)`` (a head in the model's own forward)."""
    from torch import nn

    layers = [i for i, c in enumerate(calls) if isinstance(c.module, (nn.Linear, nn.Conv2d))]
    shape = getattr(logits, "shape", None)
    if not layers or not shape or getattr(calls[layers[-1]].output, "ndim", 0) < 2:
        return len(calls)
    return layers[-1] if calls[layers[-1]].output.shape[1] == shape[-1] else len(calls)


def _candidates(calls: list[_Recorded], influential: set[int], logits) -> list[SpatialCall]:
    """The calls whose output is a square grid the logits depend on, in the order they finished, before
    the head (:func:`_head_index`; a convolutional head's class maps are left out), less the layers
    that pass a map on (:func:`_passes_maps_on`) and the insides of :func:`_pooling_internals`."""
    calls = calls[: _head_index(calls, logits)]
    inside = tuple(n + "." for n in _pooling_internals(calls, influential))
    found = []
    for c in calls:
        layout = layout_of(c.output)
        if (id(c.output) in influential and layout.grid[0] == layout.grid[1] and not _passes_maps_on(c.module)
                and not (inside and c.name.startswith(inside))):
            found.append(SpatialCall(c.name, layout))
    return found


def _influence_trace(model: "nn.Module", in_channels: int, input_size: int) -> list[SpatialCall]:
    """:func:`_candidates` of one forward and one backward pass of a random (1, C, S, S) image."""
    calls, logits, feats = _record(model, in_channels, input_size)
    return _candidates(calls, _influential(calls, logits, feats), logits)


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
    """Dotted name of the default layer to explain: the last module whose spatial output the logits
    depend on, before the head.

    A spatial output is a map (B, K, h, h), channels-last (B, h, h, K) or tokens (B, N, D) laid out on
    a grid (:mod:`.layout`), square (the input is) and of more than one position.  Global pooling,
    identity and dropout layers are left out (they make no new map), and so are the layers from the
    head on: the last ``Linear`` or ``Conv2d`` call, when it has one output channel per logit, so a
    convolutional head's class maps (SqueezeNet's ``classifier``) are not chosen.  Where a container
    and its last child return the same tensor, the container is named (``layer4`` rather than
    ``layer4.1.relu``), as users call it.  For a vision transformer whose head reads the class token,
    this is the last block's first norm (the tokens entering its attention; ``ln_1`` / ``norm1``):
    later token outputs do not reach the class token, and the attention's own projections are part
    of its pooling.
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

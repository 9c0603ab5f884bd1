"""The one probing pass: every module of a model hooked, one random image through it, one map of what it found.

:func:`model_map` runs a random (1, C, S, S) image (seed 0) through the model in eval mode with autograd
on and a forward hook on every named module, then one backward pass of a random projection of the head's
features (no parameter gradients are kept), and keeps only what the finders of :mod:`.discover` need,
no tensors:

* ``spatial``: each module whose output holds a spatial grid (a map, tokens or channels-last:
  :mod:`.layout`), in the order the calls finished (a container after its children);
* ``candidates``: those of them, square and of more than one cell, that the logits depend on, before
  the head, less pooling/identity/dropout layers and the insides of a pooling attention (the default
  layer is the last of them);
* ``cam_heads``: the layers whose spatial mean (or the mean of their ReLU) is exactly the input of the
  last ``nn.Linear`` that returns the logits (a global-average-pooling + linear head: CAM), in the order
  their calls finished (a container after its last child); pooling, identity and dropout layers left out.

The map is cached per model object, input geometry and module structure (a module swapped in after a
probe gives a new probe), so a bundle pays for the pass once.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .layout import Layout, layout_of, to_spatial

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


@dataclass(frozen=True)
class CamHead:
    """Where a CAM-ready head lives in a model.

    ``features`` is the module whose output (B, K, h, w) is globally average
    pooled, ``linear`` the ``nn.Linear(K, n_classes)`` applied to the pooled
    vector, and ``relu`` says whether a ReLU is applied between them
    (torchvision's DenseNet does this functionally).
    """

    features: str
    linear: str
    relu: bool = False


@dataclass(frozen=True)
class SpatialCall:
    """A module call whose output holds a spatial grid."""

    name: str
    layout: Layout


@dataclass(frozen=True)
class ModelMap:
    """What one probing pass learned of a model (see the module docstring)."""

    spatial: tuple[SpatialCall, ...]
    candidates: tuple[SpatialCall, ...]
    cam_heads: dict[str, CamHead] = field(default_factory=dict)


@dataclass
class _Recorded:
    """One module call of the probing pass: its first input and its output (before any later in-place change)."""

    name: str
    module: "nn.Module"
    input: Any
    output: Any


_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[Any, tuple[tuple, ModelMap]]]" = weakref.WeakKeyDictionary()


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
        if layout_of(output, min_cells=1) is not None and getattr(output, "requires_grad", False):
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


def _passes_maps_on(module) -> bool:
    """Global pooling, identity and dropout layers: their output is no new map (a pooled one, or the
    input unchanged in eval mode), so no candidate for a default layer."""
    from torch import nn

    return isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity, nn.modules.dropout._DropoutNd))


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


def _candidates(calls: list[_Recorded], influential: set[int], logits) -> tuple[SpatialCall, ...]:
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
    return tuple(found)


def _spatial(calls: list[_Recorded]) -> tuple[SpatialCall, ...]:
    """Each module's first call whose output holds a grid of at least one cell, less global pooling to 1 x 1."""
    from torch import nn

    seen: dict[str, SpatialCall] = {}
    for c in calls:
        layout = layout_of(c.output, min_cells=1)
        if layout is None or c.name in seen:
            continue
        if isinstance(c.module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and tuple(c.output.shape[-2:]) == (1, 1):
            continue
        seen[c.name] = SpatialCall(c.name, layout)
    return tuple(seen.values())


def _cam_heads(calls: list[_Recorded], logits) -> dict[str, CamHead]:
    """{layer: CamHead} for every layer whose spatial mean (of its ReLU, or not) is the input of the last
    ``nn.Linear`` returning the logits (compared on the probe's values, so dropout and flattening in
    between do not matter; NaN equal to NaN, so a model whose weights overflow still shows its head and
    its maps are refused for their values, not for their shape)."""
    import torch
    from torch import nn

    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        return {}

    def same(a, b) -> bool:
        return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5, equal_nan=True)

    heads = [c for c in calls if isinstance(c.module, nn.Linear) and same(c.output.detach(), logits.detach())]
    if not heads:
        return {}
    head = heads[-1]
    pooled_in = head.input.detach().float().reshape(1, -1)
    last: dict[str, Any] = {}
    for c in calls:  # each module's last call, in the order those finished (a 1 x 1 map counts)
        if layout_of(c.output, min_cells=1) is not None and not _passes_maps_on(c.module):
            last.pop(c.name, None)
            last[c.name] = c.output
    found = {}
    for name, out in last.items():
        act = to_spatial(out.detach(), layout_of(out, min_cells=1)).float()
        for relu in (False, True):
            pooled = (act.relu() if relu else act).mean(dim=(2, 3)).reshape(1, -1)
            if same(pooled, pooled_in):
                found[name] = CamHead(name, head.name, relu)
                break
    return found


def _probe(model: "nn.Module", in_channels: int, input_size: int) -> ModelMap:
    import torch

    calls, logits, feats = _record(model, in_channels, input_size)
    candidates = _candidates(calls, _influential(calls, logits, feats), logits)
    with torch.no_grad():
        heads = _cam_heads(calls, logits)
    return ModelMap(_spatial(calls), candidates, heads)


def model_map(model: "nn.Module", in_channels: int, input_size: int) -> ModelMap:
    """The :class:`ModelMap` of one probing pass of a random (1, in_channels, input_size, input_size)
    image, cached per model object, input geometry and module structure."""
    structure = tuple((name, id(m)) for name, m in model.named_modules())
    per_model = _CACHE.setdefault(model, {})
    key = (int(in_channels), int(input_size))
    hit = per_model.get(key)
    if hit is None or hit[0] != structure:
        hit = per_model[key] = (structure, _probe(model, in_channels, input_size))
    return hit[1]

"""Finding the layers that matter from the module itself, for any ``nn.Module`` classifier.

* :func:`default_target_layer`: the last module before the head whose output holds a square grid of
  more than one position (a map (B, K, h, h), tokens, channels-last; :mod:`.layout`) and reaches the
  logits; pooling, identity and dropout layers are left out.  The one default-layer finder: bundles
  store its answer (:func:`napari_gradcam.models.default_layer` returns "" where it finds none).
* :func:`stage_outputs`: the last module of each resolution stage (the ``layer="fine"`` preset).
* :func:`find_cam_head`: whether the logits are ``Linear(GAP(A))`` (optionally ``Linear(GAP(ReLU(A)))``)
  of a layer's output A, checked numerically on one random input; dropout and flattening in between
  are fine because the check compares values, not module types.
* :func:`spatial_layers`: every layer whose output holds a spatial grid (the layer menus).

All four read the one probing pass of :func:`.probe.model_map` (cached per model), so a bundle pays for
one forward and one backward pass of a random image, whichever it asks first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import LayerError
from .probe import CamHead, SpatialCall, model_map

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["CamHead", "SpatialCall", "cam_features", "default_target_layer", "find_cam_head", "spatial_layers", "stage_outputs"]


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
    calls = list(model_map(model, in_channels, input_size).candidates)
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
    calls = list(model_map(model, in_channels, input_size).candidates)
    if not calls:
        default_target_layer(model, in_channels, input_size)  # raises the LayerError
    ends = [c.name for c, nxt in zip(calls, calls[1:] + [None]) if nxt is None or nxt.layout.grid != c.layout.grid]
    return ends[-n:]


def find_cam_head(model: "nn.Module", layer: str, in_channels: int, input_size: int) -> CamHead | None:
    """The global-average-pooling + linear head on top of ``layer``, or None.

    The head is the last ``nn.Linear`` whose output equals the model's logits; it qualifies when its
    input equals the spatial mean of ``layer``'s output (or of its ReLU) on a random image.
    """
    return model_map(model, in_channels, input_size).cam_heads.get(layer)


def cam_features(model: "nn.Module", in_channels: int, input_size: int, prefer=()) -> CamHead | None:
    """The CAM head of the model, or None: on the first layer of ``prefer`` that feeds a global-average-pooling
    + linear head (:func:`find_cam_head`), else on the last such layer (the outermost module returning that
    map: ``layer4`` rather than ``layer4.1``), whatever its grid (a 1 x 1 map of a small input too)."""
    heads = model_map(model, in_channels, input_size).cam_heads
    chosen = next((heads[name] for name in prefer if name in heads), None)
    return chosen if chosen is not None or not heads else list(heads.values())[-1]


def spatial_layers(model: "nn.Module", in_channels: int, input_size: int, max_depth: int | None = None) -> list[str]:
    """Dotted names of the layers whose output is a spatial map (B, K, h, w), tokens on a patch grid or a
    channels-last map (:mod:`.layout`), in execution order.

    Found by the probing pass, so the list is exact for any model.  Global pooling layers (an adaptive
    pool to 1 x 1) are left out: their "map" is one pixel, useless as a heatmap.  ``max_depth`` keeps
    names with at most that many dots + 1 parts (``layer4`` is depth 1, ``layer4.1`` depth 2).
    """
    calls = model_map(model, in_channels, input_size).spatial
    return [c.name for c in calls if max_depth is None or c.name.count(".") < max_depth]

"""What the perturbation family shares: the layer's own output hooked in a pass, batch sizes, weighted maps.

Every method of the family (:mod:`.scorecam`, :mod:`.ablation`) runs without gradients under
``torch.inference_mode`` in batches, all target classes from the same passes; its map is
``ReLU(sum_k w_k A_k)`` with ``A`` (K, h, w) the named layer's own output (taken before any in-place
operation after it), like every CAM here; token and channels-last outputs (vision transformers) are read
on their grid (:mod:`napari_gradcam.introspect.layout`).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from ....errors import GradCamError, LayerError
from ....introspect.layout import describe, layout_of, to_spatial
from ..registry import MapOutput

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from ....bundle import ModelBundle


@contextmanager
def layer_output(model: "nn.Module", layer: str,
                 replace: "Callable[[torch.Tensor], torch.Tensor] | None" = None) -> Iterator[list]:
    """Hook ``layer`` for the block: the list yielded receives a copy of each output, in the layer's own
    layout (a map (B, K, h, w), channels-last (B, h, w, K) or tokens (B, N, K): :mod:`napari_gradcam.introspect.layout`).

    ``replace(output)`` (optional) gives the tensor passed on instead.  The copy is taken before any
    in-place operation after the layer; the hook acts in this thread only and is removed on exit.
    """
    import torch

    from ....introspect.modules import get_module

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
    """A layer's output in its own layout -> (B, K, h, w) (:func:`napari_gradcam.introspect.layout.to_spatial`)."""
    return to_spatial(output, layout_of(output, min_cells=1))


def _channel_axis(output: "torch.Tensor") -> int:
    """The channel axis of a layer's output: 1 for a map (B, K, h, w), the last for channels-last or tokens."""
    return 1 if layout_of(output, min_cells=1).kind == "nchw" else output.ndim - 1


def _weighted_maps(act: "torch.Tensor", weights: "torch.Tensor") -> "torch.Tensor":
    """act (K, h, w), weights (T, K) -> ReLU(sum_k w_k A_k) (T, h, w) float32."""
    import torch

    return torch.relu(torch.einsum("tk,khw->thw", weights.float(), act.float()))


def one_layer(title: str, layers: Sequence[str]) -> str:
    """The one layer of a method computed at one layer, else a LayerError."""
    if len(layers) != 1:
        raise LayerError(f"{title} is computed at one layer; {len(layers)} were given.")
    return layers[0]


def per_image_maps(bundle: "ModelBundle", x: "torch.Tensor", targets, layer: str,
                   weights_of: "Callable[..., torch.Tensor]") -> MapOutput:
    """The family's loop: one hooked pass of the batch, then for each image its channel weights
    ``weights_of(b, logits, output, acts, wanted) -> (T, K)`` (b the image, logits (B, n), output the
    layer's output in its layout, acts (B, K, h, w), wanted its T classes) and its maps
    ``ReLU(sum_k w_k A_k)`` (B, T, h, w)."""
    import torch

    logits, output = _forward(bundle.model, x, layer)
    acts = _spatial(output)
    indices = _targets_for(logits[0], targets)
    maps = []
    for b in range(x.shape[0]):
        wanted = indices if targets is not None or b == 0 else _targets_for(logits[b], None)
        maps.append(_weighted_maps(acts[b], weights_of(b, logits, output, acts, wanted)))
    return MapOutput(logits, torch.stack(maps), indices)

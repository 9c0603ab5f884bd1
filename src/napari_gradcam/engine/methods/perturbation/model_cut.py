"""Running part of a model: the layers after a target layer on a cached activation, and fast copies.

Perturbation methods run a model many times on inputs that differ little.  Two exact ways to make
that cheaper live here:

* :func:`split_after` cuts a model with ``torch.fx`` at a layer: ``prefix(x)`` returns the layer's
  output and every earlier value the rest of the network still needs (skip connections), and
  ``tail(activation, *saved)`` runs only the layers after it.  Ablation-CAM perturbs the layer's
  channels, so it runs only ``tail``.  Models that ``torch.fx`` cannot trace (data-dependent control
  flow), a layer used twice, or saved values that are not tensors give ``None``; callers then run
  the whole model with a hook that replaces the layer's output.
* :func:`inference_copy` is a copy of a model for many batched passes: BatchNorm folded into the
  convolution before it (``torch.fx.experimental.optimization.fuse``) and channels-last memory
  layout.  Same function, other rounding (relative differences about 1e-6).

Callers check both against the model itself on the unperturbed input (:func:`close_logits`)
and fall back to the model when they disagree.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import fx, nn


@dataclass
class Split:
    """A model cut after one layer.

    prefix : module, ``prefix(x) -> (activation, *saved)``; activation (B, K, h, w) is the layer's output
    tail : module, ``tail(activation, *saved) -> logits`` (B, n_classes)
    """

    prefix: "nn.Module"
    tail: "nn.Module"


def _tracer(layer: str) -> "fx.Tracer":
    import torch.fx as fx

    class _LeafAt(fx.Tracer):
        """The default tracer, with the target layer kept whole (one call_module node)."""

        def is_leaf_module(self, m, qualname: str) -> bool:
            return qualname == layer or super().is_leaf_module(m, qualname)

    return _LeafAt()


def _graph_from(nodes, inputs: list, outputs) -> "fx.Graph":
    """A new graph with ``inputs`` as placeholders, copies of ``nodes`` and ``outputs`` returned."""
    import torch.fx as fx

    graph = fx.Graph()
    env: dict = {}
    for i, node in enumerate(inputs):
        env[node] = graph.placeholder(f"input_{i}")
    for node in nodes:
        if node.op == "output":
            continue
        env[node] = graph.node_copy(node, lambda a: env[a])
    graph.output(fx.map_arg(outputs, lambda a: env[a]))
    return graph


def split_after(model: "nn.Module", layer: str) -> Split | None:
    """Cut ``model`` after the submodule ``layer`` (dotted name); None where it cannot be cut.

    Returns
    -------
    Split, or None when tracing fails, the layer is called more than once, or it is not used.
    """
    import torch.fx as fx

    try:
        tracer = _tracer(layer)
        graph = tracer.trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means: run the whole model instead
        return None
    nodes = list(graph.nodes)
    hits = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == layer]
    if len(hits) != 1:
        return None
    cut = hits[0]
    target = nodes[cut]
    before, after = nodes[: cut + 1], nodes[cut + 1:]
    after_set = set(after)
    saved = [n for n in before if n is not target and any(u in after_set for u in n.users)]
    output = next(n for n in nodes if n.op == "output")
    prefix = fx.GraphModule(tracer.root, _graph_from(before, [], (target, *saved)))
    tail = fx.GraphModule(tracer.root, _graph_from(after, [target, *saved], output.args[0]))
    return Split(prefix, tail)


def inference_copy(model: "nn.Module", channels_last: bool = True) -> "nn.Module":
    """A copy of an eval-mode ``model`` for many inference passes (BatchNorm folded, channels-last).

    Falls back to ``model`` itself when it cannot be traced or copied.
    """
    from torch.fx.experimental.optimization import fuse

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = fuse(model)
    except Exception:  # noqa: BLE001 - untraceable: a plain copy
        try:
            fast = copy.deepcopy(model)
        except Exception:  # noqa: BLE001 - not even copyable: the model itself
            return model
    if channels_last:
        import torch

        try:
            fast = fast.to(memory_format=torch.channels_last)
        except RuntimeError:  # a buffer of another rank (timm's Swin): the layout only, values stay the same
            pass
    return fast


def close_logits(a: "torch.Tensor", b: "torch.Tensor", rtol: float = 1e-3) -> bool:
    """Whether two (B, n) logit tensors agree up to rounding (relative to their largest magnitude)."""
    import torch

    a, b = a.float(), b.float()
    scale = torch.maximum(a.abs().max(), b.abs().max()).clamp_min(1e-6)
    return bool(a.shape == b.shape and torch.isfinite(a).all() and (a - b).abs().max() <= rtol * scale)


def batched(values: "tuple[Any, ...]", n: int) -> list:
    """Saved prefix values repeated for a batch of ``n`` (tensors with batch size 1 are expanded)."""
    import torch

    out = []
    for v in values:
        if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == 1:
            out.append(v.expand(n, *v.shape[1:]).contiguous())
        else:
            out.append(v)
    return out

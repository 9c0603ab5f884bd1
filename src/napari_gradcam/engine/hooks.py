"""Capturing layers' activations during a forward pass, as a context manager.

The trick that makes Grad-CAM cost about one forward pass: the trunk runs under
``torch.no_grad()``; the hook on the first target layer detaches its output, makes it
require grad and switches grad mode on for the rest of the forward pass, so only
the head (the layers after the target) records a graph.  The backward pass then
runs through the head only, and no parameter gradient is ever computed.  A later target
layer (several layers are fused) is already in the graph and is kept as it is, so
gradients reach the earlier layers through it.

Each hook hands a *copy* of the layer's output downstream, so an in-place operation after the
layer (ResNet's and DenseNet's ``relu(inplace=True)``) cannot overwrite the recorded tensor: the
engine explains the named layer's own output.

Grad mode is thread-local and each hook acts only in the thread that registered it,
so explaining from a worker thread while another thread uses the same model is safe.
Hooks are removed on exit, even when the forward pass raises.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

from ..errors import LayerError
from ..introspect.modules import get_module
from ..introspect.layout import Layout, describe, layout_of, to_spatial

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (only the activations are needed)."""


@dataclass
class Captured:
    """The hooked layers' outputs, in the order the layers were named.

    outputs : each layer's own output in its own layout (tokens, channels-last, ...), or None
        before the layer ran; with ``grad=True`` these are the tensors to differentiate against.
    layouts : how each output holds its spatial grid.
    """

    names: list[str]
    outputs: list = field(default_factory=list)
    layouts: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.outputs = [None] * len(self.names)
        self.layouts = [None] * len(self.names)

    @property
    def complete(self) -> bool:
        return all(o is not None for o in self.outputs)

    def spatial(self, i: int = 0) -> "torch.Tensor":
        """Layer ``i``'s activation as (B, K, h, w), detached; a LayerError if the layer never ran."""
        if self.outputs[i] is None:
            raise LayerError(f"Layer {self.names[i]!r} was not used in the forward pass; pick another layer.")
        return to_spatial(self.outputs[i].detach(), self.layouts[i])

    @property
    def activation(self) -> "torch.Tensor | None":
        """The first layer's activation (B, K, h, w), or None before the pass."""
        return None if self.outputs[0] is None else self.spatial(0)


def _layout_or_error(output, layer: str) -> Layout:
    layout = layout_of(output, min_cells=1)
    if layout is None:
        raise LayerError(f"Layer {layer!r} outputs {describe(output)}, not a spatial map (B, K, h, w) or tokens; "
                         "pick a convolutional or transformer block.")
    return layout


@contextmanager
def capture(model: "nn.Module", layers: "str | Sequence[str]", *, grad: bool = False,
            stop: bool = False) -> Iterator[Captured]:
    """Hook ``model``'s submodules ``layers`` (dotted names) for the duration of the block.

    Parameters
    ----------
    grad : bool
        Make the first captured activation a leaf that requires grad and enable grad mode for the
        layers after it (run the forward pass itself under ``torch.no_grad()``).
    stop : bool
        Raise :class:`StopForward` once every layer has run (catch it around the forward pass).
    """
    import torch

    names = [layers] if isinstance(layers, str) else list(layers)
    modules = [get_module(model, n) for n in names]
    box = Captured(names)
    owner = threading.get_ident()

    def make_hook(i: int):
        def hook(_module, _inputs, output):
            if threading.get_ident() != owner:
                return None
            box.layouts[i] = _layout_or_error(output, names[i])
            if grad:
                torch.set_grad_enabled(True)  # thread-local; restored by the caller's no_grad() exit
                if not output.requires_grad:  # the first layer: the graph starts here
                    output = output.detach().requires_grad_(True)
            box.outputs[i] = output if grad else output.detach()
            if stop and box.complete:
                raise StopForward
            return output.clone()  # downstream in-place operations cannot touch the recorded tensor

        return hook

    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(modules)]
    try:
        yield box
    finally:
        for h in handles:
            h.remove()

"""Capturing a layer's activation during a forward pass, as a context manager.

The trick that makes Grad-CAM cost about one forward pass: the trunk runs under
``torch.no_grad()``; the hook on the target layer detaches its output, makes it
require grad and switches grad mode on for the rest of the forward pass, so only
the head (the layers after the target) records a graph.  The backward pass then
runs through the head only, and no parameter gradient is ever computed.

Grad mode is thread-local and each hook acts only in the thread that registered it,
so explaining from a worker thread while another thread uses the same model is safe.
Hooks are removed on exit, even when the forward pass raises.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from ..errors import LayerError
from ..models import get_module

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (only the activation is needed)."""


@dataclass
class Captured:
    """The activation of the hooked layer: (B, K, h, w) float tensor, or None before the pass."""

    activation: "torch.Tensor | None" = None


@contextmanager
def capture(model: "nn.Module", layer: str, *, grad: bool = False, stop: bool = False) -> Iterator[Captured]:
    """Hook ``model``'s submodule ``layer`` (dotted name) for the duration of the block.

    Parameters
    ----------
    grad : bool
        Make the captured activation a leaf that requires grad and enable grad mode for the
        layers after it (run the forward pass itself under ``torch.no_grad()``).
    stop : bool
        Raise :class:`StopForward` after capturing (catch it around the forward pass).
    """
    import torch

    module = get_module(model, layer)
    box = Captured()
    owner = threading.get_ident()

    def hook(_module, _inputs, output):
        if threading.get_ident() != owner:
            return None
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            kind = type(output).__name__ if not isinstance(output, torch.Tensor) else f"a {output.ndim}D tensor"
            raise LayerError(f"Layer {layer!r} outputs {kind}, not a (B, K, h, w) feature map; pick a convolutional layer.")
        if stop:
            box.activation = output.detach()
            raise StopForward
        if grad:
            torch.set_grad_enabled(True)  # thread-local; restored by the caller's no_grad() exit
            leaf = output.detach().requires_grad_(True)
            box.activation = leaf
            # a copy goes downstream, so in-place ops after this layer (DenseNet's relu) cannot touch the leaf
            return leaf.clone()
        box.activation = output
        return None

    handle = module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()

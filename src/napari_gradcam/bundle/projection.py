"""Concept projections stored in a bundle (P-ClArC): data, not code.

A :class:`Projection` removes one direction from one layer's activations::

    h' = h - v (v^T (h - z))        at every spatial position, or at those of a region (a box)

``v`` (C,) is a unit concept vector (an artifact's direction), ``z`` (C,) a reference point (the mean
activation of clean images), so activations of clean images are left where they were along ``v``
(Anders et al., "Finding and removing Clever Hans", Information Fusion 2022).

In a ``.safetensors`` bundle a projection is two tensors, ``__projection__.<i>.vector`` and
``__projection__.<i>.reference``, and one JSON entry of the header's ``projections`` list (the layer's
dotted name, the region and its margin, and what was unlearned).  Loading parses them as numbers and
text and installs a forward hook of this module's own code: nothing from the file runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import GradCamError, ModelFileError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn



class ProjectedBundle(Protocol):
    """What :func:`attach` and :func:`check_layers` read and write of a bundle (a
    :class:`~napari_gradcam.bundle.ModelBundle`): its network, its projections, its input geometry
    (``config.in_channels``, ``config.input_size``) and device.  Named here rather than imported from
    :mod:`.core`, which builds on this module (a bundle installs its projections when it is made)."""

    model: "nn.Module"
    projections: list
    config: Any
    device: Any


PREFIX = "__projection__."
METADATA_KEY = "projections"


@dataclass
class Projection:
    """One layer's concept direction, projected out of its activations.

    Attributes
    ----------
    layer : str
        Dotted name of the module whose output is projected.
    vector : torch.Tensor
        (C,) float32, unit norm: the direction removed.
    reference : torch.Tensor
        (C,) float32: the point the activations are projected onto (along ``vector``).
    info : dict
        JSON-ready description (method, audit folder, cluster ids, box, ...), stored with it.
    region : list of float, optional
        [y0, x0, y1, x1] fractions of the image: project only at the layer's positions in this box,
        widened by ``margin`` cells of the layer's grid; None: at every position.
    margin : int
        Cells of the layer's grid added around ``region`` on each side.
    """

    layer: str
    vector: "torch.Tensor"
    reference: "torch.Tensor"
    info: dict[str, Any] = field(default_factory=dict)
    region: list[float] | None = None
    margin: int = 1

    def __post_init__(self) -> None:
        import torch

        v = torch.as_tensor(self.vector, dtype=torch.float32).detach().cpu().flatten()
        z = torch.as_tensor(self.reference, dtype=torch.float32).detach().cpu().flatten()
        if v.numel() == 0 or v.shape != z.shape:
            raise GradCamError(f"A projection needs a vector and a reference point of the same length, not "
                               f"{v.numel()} and {z.numel()} values.")
        if not (torch.isfinite(v).all() and torch.isfinite(z).all()):
            raise GradCamError("A projection's vector and reference point must be finite numbers.")
        norm = float(v.norm())
        if not norm > 1e-12:
            raise GradCamError("A projection's vector must not be zero.")
        self.vector, self.reference = v / norm, z
        self.region = check_region(self.region)
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or not 0 <= self.margin <= 64:
            raise GradCamError(f"A projection's margin must be a whole number of cells in [0, 64], "
                               f"not {self.margin!r}.")

    def apply(self, h: "torch.Tensor") -> "torch.Tensor":
        """``h`` (B, C, ...) with the component along ``vector`` (relative to ``reference``) removed
        (inside ``region`` only, when it is set and ``h`` is (B, C, H, W))."""
        if h.ndim < 2 or h.shape[1] != self.vector.numel():
            raise GradCamError(f"Layer {self.layer!r} gives {tuple(h.shape)} activations, but its stored projection "
                               f"has {self.vector.numel()} channels.")
        shape = (1, -1) + (1,) * (h.ndim - 2)
        v = self.vector.to(device=h.device, dtype=h.dtype).view(shape)
        z = self.reference.to(device=h.device, dtype=h.dtype).view(shape)
        correction = v * ((h - z) * v).sum(dim=1, keepdim=True)
        if self.region is not None and h.ndim == 4:
            y0, x0, y1, x1 = grid_box(self.region, h.shape[2], h.shape[3], self.margin)
            mask = h.new_zeros((1, 1, h.shape[2], h.shape[3]))
            mask[..., y0:y1, x0:x1] = 1
            correction = correction * mask
        return h - correction

    def __call__(self, _module, _inputs, output):  # the forward hook
        import torch

        if not isinstance(output, torch.Tensor):
            raise GradCamError(f"Layer {self.layer!r} does not give one tensor; its projection cannot apply.")
        return self.apply(output)


def check_region(region: Any) -> list[float] | None:
    """``region`` as [y0, x0, y1, x1] floats with 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1 (or None);
    GradCamError otherwise."""
    if region is None:
        return None
    try:
        box = [float(v) for v in region]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise GradCamError(f"A projection's region must be [y0, x0, y1, x1] fractions with y0 < y1 and x0 < x1 in "
                           f"[0, 1], not {str(region)[:80]}.")
    return box


def grid_box(region: list[float], h: int, w: int, margin: int = 0) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) cell bounds on an h x w grid of the cells ``region`` touches, widened by ``margin``."""
    y0, x0 = math.floor(region[0] * h + 1e-9), math.floor(region[1] * w + 1e-9)
    y1, x1 = max(math.ceil(region[2] * h - 1e-9), y0 + 1), max(math.ceil(region[3] * w - 1e-9), x0 + 1)
    return max(0, y0 - margin), max(0, x0 - margin), min(h, y1 + margin), min(w, x1 + margin)


def install(model: "nn.Module", projections: list[Projection]) -> None:
    """Hook ``projections`` (in order) onto ``model``'s layers, replacing those installed before.

    Earlier projection hooks are found by type on every submodule (not by stored handles), so a
    deep copy of a model gets its own hooks and never removes the original's.
    """
    from .. import models

    for module in model.modules():
        for key, hook in list(module._forward_hooks.items()):
            if isinstance(hook, Projection):
                del module._forward_hooks[key]
    for p in projections:
        models.get_module(model, p.layer).register_forward_hook(p)


def attach(bundle: ProjectedBundle, projections: list[Projection]) -> ProjectedBundle:
    """``bundle`` with ``projections`` recorded and installed on its model; returns it."""
    bundle.projections = list(projections)
    install(bundle.model, bundle.projections)
    return bundle


# ----------------------------------------------------------------------------- files
def to_file(projections: list[Projection]) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:
    """(tensors, header metadata) that store ``projections`` in a ``.safetensors`` bundle."""
    tensors, entries = {}, []
    for i, p in enumerate(projections):
        tensors[f"{PREFIX}{i}.vector"] = p.vector.contiguous()
        tensors[f"{PREFIX}{i}.reference"] = p.reference.contiguous()
        entries.append({"layer": p.layer, "region": p.region, "margin": p.margin, "info": p.info})
    return tensors, ({METADATA_KEY: json.dumps(entries)} if entries else {})


def take_from_file(name: str, tensors: dict[str, "torch.Tensor"], metadata: dict[str, str]) -> list[Projection]:
    """The projections stored in a bundle file, removed from ``tensors`` (its other tensors are the weights).

    Raises ModelFileError (one sentence) for damaged entries: text that is not a list of
    ``{"layer": str, "info": dict}``, a missing or non-finite tensor, lengths that differ.
    """
    keys = [k for k in tensors if k.startswith(PREFIX)]
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        if keys:
            raise ModelFileError(f"{name} holds projection tensors without their description.")
        return []
    try:
        entries = json.loads(raw)
    except (ValueError, RecursionError):
        entries = None
    if not isinstance(entries, list) or not all(_good_entry(e) for e in entries):
        raise ModelFileError(f"{name} has a damaged projection description (not a list of layer names and info).")
    out = []
    for i, e in enumerate(entries):
        v, z = tensors.pop(f"{PREFIX}{i}.vector", None), tensors.pop(f"{PREFIX}{i}.reference", None)
        if v is None or z is None or v.ndim != 1 or not v.is_floating_point() or not z.is_floating_point():
            raise ModelFileError(f"{name} lacks the vector or reference point of projection {i}.")
        try:
            out.append(Projection(e["layer"], v, z, e["info"], e.get("region"), e.get("margin", 1)))
        except GradCamError as err:
            raise ModelFileError(f"{name} has a damaged projection {i}: {err}") from None
    extra = [k for k in tensors if k.startswith(PREFIX)]
    if extra:
        raise ModelFileError(f"{name} holds projection tensors no description names ({extra[0]}).")
    return out


def _good_entry(e: Any) -> bool:
    return (isinstance(e, dict) and isinstance(e.get("layer"), str) and bool(e["layer"])
            and isinstance(e.get("info"), dict))


def check_layers(name: str, bundle: ProjectedBundle, projections: list[Projection]) -> None:
    """ModelFileError when a projection names a layer the bundle's model lacks, or one whose output on
    a blank input is not (1, C, ...) with the projection's C channels (one forward pass, no hooks)."""
    import torch

    from .. import models

    outputs: dict[str, Any] = {}
    handles = []
    for p in projections:
        try:
            module = models.get_module(bundle.model, p.layer)
        except GradCamError:
            raise ModelFileError(f"{name} projects layer {p.layer!r}, which the model does not have.") from None
        handles.append(module.register_forward_hook(lambda _m, _i, out, key=p.layer: outputs.setdefault(key, out)))
    c, s = bundle.config.in_channels, bundle.config.input_size
    try:
        with torch.inference_mode():
            bundle.model(torch.zeros(1, c, s, s, device=bundle.device))
    finally:
        for h in handles:
            h.remove()
    for p in projections:
        out = outputs.get(p.layer)
        if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[1] != p.vector.numel():
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelFileError(f"{name} projects {p.vector.numel()} channels out of layer {p.layer!r}, whose "
                                 f"output is {shape}.")


def describe(projections: list[Projection]) -> list[str]:
    """One line per projection (for notes): what, where, from which audit."""
    lines = []
    for p in projections:
        where = "every position" if p.region is None else "the box " + ", ".join(f"{v:.2f}" for v in p.region)
        src = f", cluster(s) {p.info.get('clusters')} of {p.info.get('audit')}" if p.info.get("audit") else ""
        lines.append(f"a direction of {p.layer} ({p.info.get('method', 'projection')}, at {where}{src})")
    return lines

"""The choices the forms offer, read from the engine and the model: methods, targets, layers, and which
controls apply to a method.

Shared by the Explain and Compare tabs (neither imports the other).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .params import ALL, PREDICTED

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import ModelBundle
    from ..engine.methods import Method

__all__ = ["ALL", "PREDICTED", "FINE", "method_choices", "target_choices", "applicable_controls"]

#: the layer preset that fuses the model's last three resolution stages (engine.layers)
FINE = ("fine: last 3 stages, fused", "fine")


def method_choices() -> list[tuple[str, str]]:
    """(title, name) of every method of the engine's registry (:func:`napari_gradcam.engine.list_methods`)."""
    from ..engine import list_methods

    return [(m["title"], m["name"]) for m in list_methods()]


def target_choices(bundle: "ModelBundle | None", everything: bool = True) -> list[tuple[str, str]]:
    """The predicted class, each class of the model, and (``everything``) all classes."""
    classes = bundle.classes if bundle is not None else []
    return [(PREDICTED, PREDICTED), *[(c, c) for c in classes], *([(ALL, ALL)] if everything else [])]


def applicable_controls(spec: "Method") -> dict[str, Any]:
    """Which of the form's controls a method uses, from its registry entry (the engine's rule, read from the
    spec, not copied): ``layer`` (a method computed at a layer that the caller may choose: not pixel
    attributions, not CAM, which has its own), ``shifts`` (sub-cell shifts of a layer map: not pixel
    attributions, which are already per pixel), and a reason for each that does not apply."""
    takes_layer = getattr(spec, "takes_layer", None)  # the engine's own answer, where it gives one
    if not isinstance(takes_layer, bool):
        takes_layer = bool(spec.uses_layer) and spec.fixed_layer is None
    shifts = spec.family != "attribution"
    if not spec.uses_layer:
        why_layer = "it is computed on the input pixels, not at a layer"
    else:
        why_layer = "it is defined at one layer only, the one feeding the model's pooling head"
    return {"layer": takes_layer, "shifts": shifts, "why_not_layer": why_layer,
            "why_not_shifts": "it is already computed per input pixel"}

"""Which layers a method explains: names, modules, lists of them, and the ``"fine"`` preset.

``layer`` may be a dotted name (``"layer4"``), the module itself (``model.layer4``), a list of
them (fused by multi-layer methods), or the preset ``"fine"``: the outputs of the model's last
:data:`FINE_STAGES` resolution stages, found from the module (:func:`napari_gradcam.introspect.stage_outputs`).
Nothing here needs the architecture registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import LayerError
from ..introspect.modules import get_module

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import ModelBundle
    from .methods.registry import Method

#: Stages fused by the "fine" preset (and by the layercam-fine method).
FINE_STAGES = 3
#: Layer presets accepted as ``layer=`` (a module of that name, if the model has one, wins).
PRESETS = ("fine",)


def fine_layers(bundle: "ModelBundle", n: int = FINE_STAGES) -> list[str]:
    """The outputs of the last ``n`` resolution stages of the bundle's model, finest first."""
    from ..introspect.discover import stage_outputs

    return stage_outputs(bundle.model, bundle.in_channels, bundle.input_size, n)


def bundle_target_layer(bundle: "ModelBundle") -> str:
    """The bundle's target layer, or the one found from the module when the bundle has none."""
    if bundle.target_layer:
        return bundle.target_layer
    from ..introspect.discover import default_target_layer

    return default_target_layer(bundle.model, bundle.in_channels, bundle.input_size)


def _module_name(model, module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise LayerError(f"The {type(module).__name__} given as the layer is not part of the model.")


def _is_preset(model, name: str) -> bool:
    if name.strip().lower() not in PRESETS:
        return False
    try:
        model.get_submodule(name)
    except AttributeError:
        return True
    return False


def layer_names(bundle: "ModelBundle", layer) -> list[str]:
    """``layer`` (name, module, preset or a list of them) as a list of dotted names, duplicates dropped."""
    from torch import nn

    if isinstance(layer, nn.Module):
        names = [_module_name(bundle.model, layer)]
    elif isinstance(layer, str):
        names = fine_layers(bundle) if _is_preset(bundle.model, layer) else [layer]
    elif isinstance(layer, (list, tuple)):
        names = [n for item in layer for n in layer_names(bundle, item)]
    else:
        raise LayerError(f"A layer is a dotted name, a module or a list of them, not {type(layer).__name__}.")
    return list(dict.fromkeys(names))


def resolve_layers(bundle: "ModelBundle", spec: "Method", layer) -> list[str]:
    """The dotted names of the layers ``spec`` is computed at, checked against the model.

    ``layer`` None (or "") gives the method's default: its fixed layer (CAM), its preset
    (layercam-fine), or the bundle's target layer.
    """
    given = layer not in (None, "")
    if not spec.uses_layer:
        if given:
            raise LayerError(f"{spec.title} works on the input pixels and takes no layer.")
        return []
    if spec.fixed_layer is not None:
        fixed = spec.fixed_layer(bundle)
        names = layer_names(bundle, layer) if given else [fixed]
        if names != [fixed]:
            raise LayerError(f"{spec.title} is defined at the layer feeding the pooling head ({fixed}); "
                             f"use Grad-CAM to explain {' + '.join(names)}.")
        return [fixed]
    if not given:
        names = spec.default_layers(bundle) if spec.default_layers is not None else [bundle_target_layer(bundle)]
    else:
        names = layer_names(bundle, layer)
    if not names:
        raise LayerError("An empty list of layers was given.")
    if len(names) > 1 and not spec.multi_layer:
        raise LayerError(f"{spec.title} explains one layer at a time, not {len(names)}.")
    for name in names:
        get_module(bundle.model, name)
    return names

"""The registry of explanation methods: one :class:`Method` per name, each with one compute function.

A method module (``gradcam``, ``cam``, ...) describes each of its methods with a :class:`Method` and
calls :func:`register` at import.  :func:`get_method` resolves names and aliases ("Grad-CAM",
"grad_cam" -> "gradcam"); :func:`list_methods` is what ``ng.list_methods()`` and the CLI show.

The compute contract (what ``explain`` calls) is::

    compute(bundle, x, targets, layers, **options) -> MapOutput

with ``bundle.model`` an ``nn.Module`` in eval mode, ``x`` the (B, C, S, S) float32 network input on the
model's device, ``targets`` a list of class indices or score functions (the same for every image; see
:func:`target_scores`) or None for each image's predicted class, and ``layers`` a list of dotted layer
names (empty for methods that work on the input pixels; several only for ``multi_layer`` methods).
``options`` holds ``eigen=True`` for ``smooth="eigen"`` (only passed to ``eigen_smooth`` methods) and
``fusion="mean"|"max"`` when several layers are given (only to ``multi_layer`` methods).
``explain`` does the rest: resizing to the image, normalising, shifts, aug smoothing, metadata.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ...errors import GradCamError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: modules whose import registers methods, in the order they are listed
METHOD_MODULES = ("cam", "gradient", "perturbation", "attribution")


@dataclass
class MapOutput:
    """What a method computes for a batch.

    logits : (B, n_classes) float32
    maps : (B, T, h, w) float32; ReLU applied for CAM-family methods, signed for attributions
    targets : what each of the T maps explains: a class index (for ``targets=None``: image 0's
        predicted class) or the score function given
    """

    logits: "torch.Tensor"
    maps: "torch.Tensor"
    targets: list


def target_scores(logits: "torch.Tensor", target) -> "torch.Tensor":
    """The (B,) scores to explain: ``logits[:, target]`` for a class index, ``target(logits)`` for a
    function of the (B, n_classes) logits (e.g. ``lambda z: z[:, 1] - z[:, 0]``)."""
    if not callable(target):
        return logits[:, int(target)]
    scores = target(logits)
    if not hasattr(scores, "shape") or tuple(scores.shape) != (logits.shape[0],):
        shape = tuple(scores.shape) if hasattr(scores, "shape") else type(scores).__name__
        raise GradCamError(f"A target function must return one score per image, shape ({logits.shape[0]},), "
                           f"not {shape}.")
    return scores


@dataclass(frozen=True)
class Method:
    """One explanation method.

    name : canonical name ("gradcam++")
    title : display name ("Grad-CAM++")
    family : "cam" (activation maps at a layer) or "attribution" (input-pixel attributions)
    description : one line for menus and ``list_methods()``
    compute : see the module docstring
    aliases : other spellings accepted by :func:`get_method`
    signed : the maps keep their sign (shown with a diverging colormap)
    uses_layer : computed at a layer (coarse map); False for pixel attributions
    fixed_layer : for methods defined at one layer only (CAM: the layer feeding the pooling head),
        ``fixed_layer(bundle)`` names it; None: any layer, default ``bundle.target_layer``
    multi_layer : accepts several layers and fuses their maps (``layer=[...]``)
    eigen_smooth : accepts ``smooth="eigen"``
    default_layers : ``default_layers(bundle)`` lists the layers used when none is given (a preset);
        None: ``bundle.target_layer``
    score_functions : ``target`` may be a function of the logits (the gradient CAM family)
    """

    name: str
    title: str
    family: str
    description: str
    compute: Callable[..., MapOutput]
    aliases: tuple[str, ...] = ()
    signed: bool = False
    uses_layer: bool = True
    fixed_layer: Callable[[Any], str] | None = None
    multi_layer: bool = False
    eigen_smooth: bool = False
    default_layers: Callable[[Any], list[str]] | None = None
    score_functions: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


_REGISTRY: dict[str, Method] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return str(name).strip().lower().replace(" ", "").replace("_", "-")


def register(method: Method) -> Method:
    """Add ``method`` to the registry (its name and aliases become valid ``method=`` values)."""
    _REGISTRY[method.name] = method
    for alias in (method.name, method.title, *method.aliases):
        _ALIASES[_key(alias)] = method.name
    return method


_LOADED: list[bool] = []


def _load_all() -> None:
    """Import the family modules once (each registers its methods)."""
    if not _LOADED:
        for mod in METHOD_MODULES:
            importlib.import_module(f"{__package__}.{mod}")
        _LOADED.append(True)


def get_method(name: str) -> Method:
    """The registered method called ``name`` (any alias, case and '-'/'_'/' ' ignored)."""
    _load_all()
    canonical = _ALIASES.get(_key(name)) if isinstance(name, str) else None
    if canonical is None:
        raise GradCamError(f"Unknown method {name!r}; choose one of {', '.join(_REGISTRY)}.")
    return _REGISTRY[canonical]


def canonical_method(name: str) -> str:
    """'Grad-CAM', 'grad_cam', ... -> 'gradcam'; a clear error for unknown methods."""
    return get_method(name).name


def method_title(name: str) -> str:
    """Display name of a method ('gradcam++' -> 'Grad-CAM++'); unknown names are returned as they are."""
    try:
        return get_method(name).title
    except GradCamError:
        return str(name)


def list_methods() -> list[dict[str, str]]:
    """Every method as ``{"name", "title", "family", "description"}``, in registry order."""
    _load_all()
    return [{"name": m.name, "title": m.title, "family": m.family, "description": m.description}
            for m in _REGISTRY.values()]


def method_names(family: str | None = None) -> list[str]:
    """Canonical names, optionally of one family."""
    _load_all()
    return [m.name for m in _REGISTRY.values() if family is None or m.family == family]


def applicable_layer(method: "str | Method", layer):
    """The layer a caller's choice of ``layer`` gives ``method``: the choice itself (a dotted name, a module,
    a list of them or a preset) where the method is computed at a chosen layer; None where it takes no
    layer (pixel attributions) or only its own (CAM: the layer feeding the pooling head), so that its
    default applies.  The one rule for every caller (the explain panel, ``compare_methods``, the CLI).
    """
    spec = method if isinstance(method, Method) else get_method(method)
    if not spec.uses_layer or spec.fixed_layer is not None or layer is None:
        return None
    return None if isinstance(layer, str) and not layer.strip() else layer

"""A NaN is not an answer: finiteness checks of weights, running statistics, scores and maps.

* :func:`check_weights` (on load): every floating tensor of the state dict finite, and every
  BatchNorm's running variance non-negative and its running mean finite.  A negative variance makes
  ``sqrt(var + eps)`` NaN for every image, so the model would answer "NaN" to everything.
* :func:`check_logits` / :func:`check_maps` (on every path that answers: predict, explain, tiled
  heatmaps, feature maps, evaluation, training's validation): a NaN or infinite score or map is
  refused with one sentence naming the model and, found by re-running the input with hooks, the
  first layer whose output was not finite.  The re-run happens only on the error path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import NumericalError, shown

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["check_weights", "check_logits", "check_maps", "first_non_finite_layer", "all_finite"]


def all_finite(t: "torch.Tensor") -> bool:
    """Whether every value of a (floating) tensor is finite; integer tensors always are."""
    import torch

    return not t.is_floating_point() or bool(torch.isfinite(t).all())


def check_weights(model: "nn.Module", name: str, error: type = NumericalError) -> None:
    """Refuse a model whose weights or normalisation statistics cannot give finite answers.

    Raises ``error`` (NumericalError; ``load_model`` passes ModelFileError) naming ``name`` (the file)
    and the first bad tensor: a NaN or infinite weight or buffer, or a BatchNorm running variance
    below zero.
    """
    import torch
    from torch.nn.modules.batchnorm import _NormBase

    with torch.no_grad():
        for key, t in model.state_dict().items():
            if not all_finite(t):
                raise error(f"{shown(name)} contains NaN or infinite weights ({key}); it cannot give answers.")
        for mod_name, mod in model.named_modules():
            var = getattr(mod, "running_var", None)
            if isinstance(mod, _NormBase) and isinstance(var, torch.Tensor) and bool((var < 0).any()):
                n = int((var < 0).sum())
                raise error(
                    f"{shown(name)} has a negative BatchNorm running variance in {mod_name}.running_var "
                    f"({n} of {var.numel()} channels); it would give NaN for every image.")


def _leaves(model: "nn.Module") -> list[tuple[str, "nn.Module"]]:
    return [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]


def first_non_finite_layer(model: "nn.Module", x: "torch.Tensor") -> tuple[str, str] | None:
    """(name, type) of the first leaf layer, in execution order, whose output holds NaN or infinity for
    input ``x``; None if every layer output is finite (the problem is after the last layer)."""
    import torch

    found: list[tuple[str, str]] = []
    handles = []

    def hook_for(name: str, mod: "nn.Module"):
        def hook(_m, _inp, out) -> None:
            if found:
                return
            outs = out if isinstance(out, (tuple, list)) else (out,)
            if any(isinstance(o, torch.Tensor) and not all_finite(o) for o in outs):
                found.append((name, type(mod).__name__))
        return hook

    try:
        for name, mod in _leaves(model):
            handles.append(mod.register_forward_hook(hook_for(name, mod)))
        with torch.inference_mode():
            model(x)
    except Exception:  # noqa: BLE001 - a diagnosis only; the caller raises its own error
        pass
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def _model_name(bundle: Any) -> str:
    arch = getattr(bundle, "architecture", None) or type(getattr(bundle, "model", bundle)).__name__
    return f"{arch} model"


def _where(bundle: Any, x: "torch.Tensor | None") -> str:
    if x is None:
        return ""
    model = getattr(bundle, "model", bundle)
    layer = first_non_finite_layer(model, x)
    return f", first at layer {layer[0]} ({layer[1]})" if layer else ""


def check_logits(bundle: Any, logits: "torch.Tensor", x: "torch.Tensor | None" = None, what: str = "this image") -> None:
    """NumericalError unless every logit is finite.

    bundle : a ModelBundle (or an nn.Module); logits : (B, n_classes); x : the input batch, re-run
    with hooks on the error path to name the first layer whose output was not finite.
    """
    if all_finite(logits):
        return
    raise NumericalError(
        f"The {_model_name(bundle)} gave NaN or infinite scores for {what}{_where(bundle, x)}; its weights "
        "or BatchNorm statistics are broken, so no answer is given.")


def check_maps(bundle: Any, maps: "torch.Tensor", method: str, layer: str | None,
               x: "torch.Tensor | None" = None) -> None:
    """NumericalError unless every value of ``maps`` (any shape) is finite; names the method and layer."""
    if all_finite(maps):
        return
    at = f" at layer {layer}" if layer else ""
    raise NumericalError(
        f"The {method} map{at} of the {_model_name(bundle)} holds NaN or infinite values{_where(bundle, x)}; "
        "the layer's activations or gradients overflow, so no heatmap is given.")

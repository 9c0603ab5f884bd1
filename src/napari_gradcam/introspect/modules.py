"""Modules by name: finding a model's submodules (the image's first convolution, the classifier head)
and swapping them (a head sized for the classes, a first convolution for 1 or 3 channels).

Part of the introspection floor: it imports nothing of the package but :mod:`napari_gradcam.errors`,
so the architecture builders (:mod:`napari_gradcam.models`, ``tv_models``, ``timm_models``) and the
engine can all use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import GradCamError, LayerError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


def get_module(model: "nn.Module", name: str) -> "nn.Module":
    """The submodule at dotted path ``name`` ("" is the model itself)."""
    if name == "":
        return model
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise LayerError(
            f"The model has no layer {name!r}; pick one from the model's layer list "
            f"(e.g. {', '.join(n for n, _ in list(model.named_children())[:4])})."
        ) from None


def set_module(model: "nn.Module", name: str, module: "nn.Module") -> None:
    """Replace the submodule at dotted path ``name``."""
    parent_name, _, child = name.rpartition(".")
    setattr(get_module(model, parent_name), child, module)


def first_conv_name(model: "nn.Module") -> str:
    """Dotted name of the convolution that takes the image (the patch embedding of a ViT): timm's
    ``pretrained_cfg["first_conv"]`` where it names one, else the first ``Conv2d`` registered."""
    from torch import nn

    cfg = getattr(model, "pretrained_cfg", None) or {}
    named = cfg.get("first_conv") if isinstance(cfg, dict) else None
    if isinstance(named, str):
        try:
            if isinstance(model.get_submodule(named), nn.Conv2d):
                return named
        except AttributeError:
            pass
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name
    raise GradCamError("The model has no 2D convolution to take the image.")


def head_name(model: "nn.Module") -> str:
    """Dotted name of the classifier head: the last ``Linear`` registered, else the last ``Conv2d``
    (SqueezeNet's 1 x 1 convolution)."""
    from torch import nn

    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise GradCamError("The model has no linear or convolutional layer to act as its head.")
    return convs[-1]


def replace_head(model: "nn.Module", n_classes: int, name: str | None = None) -> None:
    """Put a new head with ``n_classes`` outputs where the old one (``name`` or :func:`head_name`) was."""
    from torch import nn

    name = name or head_name(model)
    old = get_module(model, name)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, n_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, n_classes, old.kernel_size, old.stride, old.padding,
                        bias=old.bias is not None)
    set_module(model, name, new.to(old.weight.device))


def adapt_first_conv(model: "nn.Module", in_channels: int, keep_weights: bool = False,
                     name: str | None = None) -> None:
    """Make the first convolution take ``in_channels`` channels (no-op when it already does).

    With ``keep_weights`` a 3 -> 1 change keeps the sum of the RGB kernels (a gray image then gives
    what the RGB weights gave for the same image in three channels).
    """
    import torch
    from torch import nn

    name = name or first_conv_name(model)
    old = get_module(model, name)
    if old.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                    old.groups, old.bias is not None, old.padding_mode).to(old.weight.device)
    if keep_weights:
        with torch.no_grad():
            gray = old.weight.sum(dim=1, keepdim=True)  # (out, 1, kh, kw)
            new.weight.copy_(gray if in_channels == 1 else gray.expand_as(new.weight) / in_channels)
            if old.bias is not None:
                new.bias.copy_(old.bias)
    set_module(model, name, new)

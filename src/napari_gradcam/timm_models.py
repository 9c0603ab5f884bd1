"""timm models by name (``timm:NAME``), when the optional ``timm`` package is installed.

Channels and classes go through timm's own ``in_chans`` / ``num_classes``; models whose pretrained
config fixes the input size (ViTs) get ``img_size``; the normalisation comes from the model's
``pretrained_cfg``.  Nothing is downloaded: ImageNet weights come only from a local file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GradCamError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

INSTALL_HINT = 'pip install "napari-gradcam[timm]"'


def import_timm():
    """The ``timm`` module, or a GradCamError saying how to install it."""
    try:
        import timm
    except ImportError:
        raise GradCamError(f"timm models need the timm package, which is not installed; {INSTALL_HINT}.") from None
    return timm


def check_name(name: str) -> str:
    """``name`` if timm knows it (tags like ``resnet18.a1_in1k`` included); else one sentence with near names."""
    import difflib

    timm = import_timm()
    if ":" in name or "/" in name:
        raise GradCamError(f"timm:{name} names a model on a hub; napari-gradcam builds timm models by "
                           "architecture name only and never downloads (e.g. timm:resnet18).")
    if timm.is_model(name):
        return name
    near = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f"; did you mean {', '.join('timm:' + n for n in near)}?" if near else "; see timm.list_models()."
    raise GradCamError(f"timm has no model called {name!r}{hint}")


def _size_kwargs(timm, name: str, input_size: int) -> dict[str, Any]:
    cfg = timm.get_pretrained_cfg(name)
    fixed = bool(cfg and getattr(cfg, "fixed_input_size", False))
    return {"img_size": int(input_size)} if fixed else {}


def build(name: str, n_classes: int, in_channels: int, input_size: int,
          pretrained: bool | str | os.PathLike = False) -> "nn.Module":
    """timm's ``name`` with ``num_classes=n_classes`` and ``in_chans=in_channels``.

    ``pretrained`` may be a local state-dict file of the model's 1000-class, 3-channel weights.
    """
    timm = import_timm()
    name = check_name(name)
    kwargs = _size_kwargs(timm, name, input_size)
    if pretrained is True:
        raise GradCamError(f"timm weights are never downloaded here; pass the path of timm:{name}'s "
                           "ImageNet weights file as pretrained=PATH, or train from scratch.")
    try:
        if not pretrained:
            return timm.create_model(name, pretrained=False, num_classes=n_classes, in_chans=in_channels,
                                     **kwargs)
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise GradCamError(f"timm:{name} cannot be built for {in_channels} channel(s) at {input_size} px "
                           f"({first}).") from None
    _load_local(model, name, Path(pretrained))
    model.reset_classifier(n_classes)
    from .introspect.modules import adapt_first_conv

    adapt_first_conv(model, in_channels, keep_weights=True)
    return model


def _load_local(model: "nn.Module", name: str, path: Path) -> None:
    import torch

    if not path.is_file():
        raise GradCamError(f"There are no weights for timm:{name} at {path}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        model.load_state_dict(state)
    except Exception:  # noqa: BLE001 - any unreadable or mismatching file is the user's to fix
        raise GradCamError(f"The weights in {path.name} are not a state dict of timm's 1000-class, "
                           f"3-channel {name}.") from None


def normalisation(model: "nn.Module", in_channels: int) -> tuple[list[float], list[float]]:
    """Mean and std from the model's ``pretrained_cfg`` (their averages for one channel)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = [float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))]
    std = [float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))]
    if in_channels == 1:
        return [sum(mean) / len(mean)], [sum(std) / len(std)]
    return mean, std

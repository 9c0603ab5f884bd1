"""Every torchvision classification model by name (``torchvision:NAME``).

The network is built with torchvision's own ``num_classes`` (so the head is torchvision's, sized for
the class count) and, for ViT and MaxViT, the constructor's image size; the first convolution (or
patch embedding) is then adapted to 1 or 3 input channels.  ImageNet weights are read from the
torch hub cache or a local file, never downloaded.
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import GradCamError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

#: torchvision names shown first in lists (the registered nine come before these)
COMMON = ("resnet34", "resnet101", "convnext_tiny", "convnext_small", "efficientnet_v2_s", "efficientnet_b3",
          "regnet_y_400mf", "regnet_y_1_6gf", "densenet161", "mobilenet_v3_large", "mobilenet_v3_small",
          "swin_t", "swin_v2_t", "vit_b_16", "maxvit_t", "shufflenet_v2_x1_0", "resnext50_32x4d",
          "wide_resnet50_2", "inception_v3", "squeezenet1_1")

#: pretrained weights that expect inputs scaled to [-1, 1] (torchvision turns ``transform_input`` on for them)
_HALF_NORMALISED = ("googlenet", "inception_v3")


@lru_cache(maxsize=1)
def classifiers() -> tuple[str, ...]:
    """Names of torchvision's image classification models (``torchvision.models.list_models``), sorted."""
    import torchvision.models as tvm

    return tuple(sorted(tvm.list_models(module=tvm)))


def patch_size(name: str) -> int | None:
    """The patch size of a torchvision ViT name (``vit_b_16`` -> 16), else None."""
    if name.startswith("vit_"):
        return int(name.rsplit("_", 1)[-1])
    return None


def check_input_size(name: str, input_size: int) -> None:
    """Refuse, in one sentence, an input size the constructor cannot take (ViT: a multiple of the patch;
    MaxViT: a multiple of 224's partition grid)."""
    patch = patch_size(name)
    if patch and input_size % patch:
        near = max(patch, round(input_size / patch) * patch)
        raise GradCamError(f"{name} needs an input_size that is a multiple of its {patch}-pixel patches "
                           f"(e.g. {near} or 224), not {input_size}.")
    if name.startswith("maxvit") and input_size % 224:  # every stage's map (1/4 .. 1/32) in 7 x 7 windows
        raise GradCamError(f"{name} needs an input_size that is a multiple of 224 (its feature maps divide into "
                           f"7 x 7 windows), not {input_size}.")


def _constructor_kwargs(name: str, input_size: int) -> dict:
    kwargs: dict = {}
    if name.startswith("vit_"):
        kwargs["image_size"] = int(input_size)
    elif name.startswith("maxvit"):
        kwargs["input_size"] = (int(input_size), int(input_size))
    if name in _HALF_NORMALISED:  # no auxiliary heads (their outputs are a tuple in training mode)
        kwargs.update(aux_logits=False, init_weights=True)
    return kwargs


def build(name: str, n_classes: int, in_channels: int, input_size: int,
          pretrained: bool | str | os.PathLike = False) -> "nn.Module":
    """torchvision's ``name`` with ``n_classes`` outputs and ``in_channels`` inputs.

    Parameters
    ----------
    name : one of :func:`classifiers`
    pretrained : True (the torch hub cache), a path to torchvision's 1000-class state dict, or False
    """
    import torchvision.models as tvm

    from .introspect.modules import adapt_first_conv, replace_head

    check_input_size(name, input_size)
    kwargs = _constructor_kwargs(name, input_size)
    builder = tvm.get_model_builder(name)
    try:
        model = builder(weights=None, **kwargs) if pretrained else builder(weights=None, num_classes=n_classes,
                                                                           **kwargs)
    except (ValueError, AssertionError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise GradCamError(f"torchvision's {name} cannot be built for {input_size}-pixel inputs ({first}).") \
            from None
    if not pretrained:
        adapt_first_conv(model, in_channels)
        return model
    _load_imagenet(model, name, input_size, pretrained)
    replace_head(model, n_classes)
    adapt_first_conv(model, in_channels, keep_weights=True)
    return model


def weights_path(name: str) -> Path | None:
    """Where torchvision would cache ``name``'s default ImageNet weights (None if it has none)."""
    import torch
    import torchvision.models as tvm

    try:
        weights = tvm.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _load_imagenet(model: "nn.Module", name: str, input_size: int, pretrained) -> None:
    import torch

    path = weights_path(name) if pretrained is True else Path(pretrained)
    if path is None:
        raise GradCamError(f"torchvision has no ImageNet weights for {name}; train it from scratch.")
    if not path.is_file():
        raise GradCamError(f"ImageNet weights for {name} are not at {path}; put torchvision's file there "
                           "(it is never downloaded here) or train from scratch.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise GradCamError(f"{path.name} is not a readable PyTorch state dict of torchvision's {name}.") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise GradCamError(f"{path.name} is not a state dict of torchvision's {name}.")
    state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2.", "AuxLogits."))}
    patch = patch_size(name)
    pos = state.get("encoder.pos_embedding")
    if patch and pos is not None and pos.shape[1] != (input_size // patch) ** 2 + 1:
        from torchvision.models.vision_transformer import interpolate_embeddings

        state = interpolate_embeddings(input_size, patch, state)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError):
        raise GradCamError(f"The weights in {path.name} do not fit torchvision's 3-channel, 1000-class {name}.") \
            from None


def pretrained_normalisation(name: str) -> tuple[list[float], list[float]]:
    """Mean and std that ``name``'s ImageNet weights expect (3 channels)."""
    if name in _HALF_NORMALISED:
        return [0.5] * 3, [0.5] * 3
    return [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def input_size_from_weights(name: str, tensors: dict) -> int | None:
    """The image size a ViT state dict was trained at (from its position embedding), else None."""
    patch = patch_size(name)
    pos = tensors.get("encoder.pos_embedding")
    if not patch or pos is None or pos.ndim != 3:
        return None
    side = round((int(pos.shape[1]) - 1) ** 0.5)
    return side * patch if side * side == int(pos.shape[1]) - 1 else None

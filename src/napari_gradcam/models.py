"""Architectures by name: our simple_cnn, every torchvision classifier, timm models.

Nine architectures are registered (a fast path that knows their layers without tracing); any other
torchvision classification model is ``torchvision:NAME`` (:mod:`.tv_models`) and a timm model
``timm:NAME`` (:mod:`.timm_models`).  Each is built with its head sized for the class count and its
first convolution (or patch embedding) adapted to 1 or 3 input channels.  Registered ones know

* ``target_layer``: the default layer for Grad-CAM (the last convolutional block);
* ``cam``: where the global-average-pooling + linear head is, if it has one
  (CAM is defined only for those heads).

For the others both are found from the module (:mod:`napari_gradcam.introspect`).
"""

from __future__ import annotations

import difflib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import GradCamError, LayerError
from .introspect.discover import CamHead, default_target_layer, spatial_layers
from .introspect.modules import (  # noqa: F401 - modules by name, public here since the first release
    adapt_first_conv, first_conv_name, get_module, head_name, replace_head, set_module,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


@dataclass(frozen=True)
class Architecture:
    """How to build one architecture and where its important layers are."""

    name: str
    torchvision_name: str | None  # None for our own simple_cnn
    first_conv: str
    head: str  # the final nn.Linear
    target_layer: str
    cam: CamHead | None
    weights_enum: str | None = None
    description: str = ""
    min_input_size: int = 16  # smallest input_size whose forward pass works (pooling stages)


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in [
        Architecture(
            "simple_cnn", None, "features.block1.conv1", "classifier", "features",
            CamHead("features", "classifier"),
            description="4 conv blocks (16-128 channels), global average pooling, one linear layer; CPU-friendly",
        ),
        Architecture(
            "alexnet", "alexnet", "features.0", "classifier.6", "features", None,
            "AlexNet_Weights", "AlexNet (Krizhevsky 2012); fully connected head, so no CAM",
            min_input_size=63,
        ),
        Architecture(
            "vgg16", "vgg16", "features.0", "classifier.6", "features", None,
            "VGG16_Weights", "VGG16 (Simonyan 2014); fully connected head, so no CAM",
            min_input_size=32,
        ),
        Architecture(
            "vgg19", "vgg19", "features.0", "classifier.6", "features", None,
            "VGG19_Weights", "VGG19 (Simonyan 2014); fully connected head, so no CAM",
            min_input_size=32,
        ),
        Architecture(
            "resnet18", "resnet18", "conv1", "fc", "layer4", CamHead("layer4", "fc"),
            "ResNet18_Weights", "ResNet-18 (He 2016)",
        ),
        Architecture(
            "resnet50", "resnet50", "conv1", "fc", "layer4", CamHead("layer4", "fc"),
            "ResNet50_Weights", "ResNet-50 (He 2016)",
        ),
        Architecture(
            "mobilenet_v2", "mobilenet_v2", "features.0.0", "classifier.1", "features",
            CamHead("features", "classifier.1"), "MobileNet_V2_Weights", "MobileNetV2 (Sandler 2018)",
        ),
        Architecture(
            "densenet121", "densenet121", "features.conv0", "classifier", "features",
            CamHead("features", "classifier", relu=True), "DenseNet121_Weights",
            "DenseNet-121 (Huang 2017)", min_input_size=29,
        ),
        Architecture(
            "efficientnet_b0", "efficientnet_b0", "features.0.0", "classifier.1", "features",
            CamHead("features", "classifier.1"), "EfficientNet_B0_Weights",
            "EfficientNet-B0 (Tan 2019)",
        ),
    ]
}


def list_architectures(all: bool = False) -> list[str]:  # noqa: A002 - the natural keyword
    """Names accepted by :func:`build_model`, in a stable order.

    The registered nine by default; with ``all=True`` also every other torchvision classifier
    (common ones first, then alphabetically).  Any timm model is accepted as ``timm:NAME`` too.
    """
    names = list(ARCHITECTURES)
    if not all:
        return names
    from . import tv_models

    others = [n for n in tv_models.classifiers() if n not in ARCHITECTURES]
    common = [n for n in tv_models.COMMON if n in others]
    return names + common + [n for n in others if n not in common]


def get_architecture(name: str) -> Architecture:
    """The registered :class:`Architecture` called ``name``, or a clear error naming the valid ones."""
    key = name.strip().lower().replace("-", "_")
    if key not in ARCHITECTURES:
        raise GradCamError(_unknown(name))
    return ARCHITECTURES[key]


def _unknown(name: str) -> str:
    """One sentence for an architecture name nobody knows, with near names."""
    try:
        from . import tv_models

        known = list(ARCHITECTURES) + [n for n in tv_models.classifiers() if n not in ARCHITECTURES]
    except ImportError:  # pragma: no cover - torchvision is a dependency
        known = list(ARCHITECTURES)
    near = difflib.get_close_matches(str(name).strip().lower(), known, n=3)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    return (f"Unknown architecture {name!r}{hint}; choose simple_cnn, a torchvision classifier such as resnet18 or "
            "convnext_tiny (list_architectures(all=True) lists them), or timm:NAME.")


#: architectures that are not in the registry: a module handed over in Python, an ONNX graph, and
#: (prefixes) networks built by another library.  Their target layer and CAM head are found from the
#: module itself (:mod:`napari_gradcam.introspect`).
EXTERNAL_NAMES = ("custom", "onnx")
EXTERNAL_PREFIXES = ("torchvision:", "timm:")


def find_architecture(name: str) -> Architecture | None:
    """The registered :class:`Architecture` called ``name``; None for an external one
    (``custom``, ``onnx``, ``torchvision:NAME``, ``timm:NAME``); a clear error otherwise."""
    if isinstance(name, str) and (name in EXTERNAL_NAMES or name.startswith(EXTERNAL_PREFIXES)):
        return None
    return get_architecture(name)


def canonical_name(name: str) -> str:
    """The name a bundle records: a registered name (``resnet18``), ``torchvision:NAME`` for every other
    torchvision classifier (given with or without the prefix), ``timm:NAME``, ``custom`` or ``onnx``.

    Raises GradCamError for a name none of these know.
    """
    if not isinstance(name, str) or not name.strip():
        raise GradCamError(f"architecture must be a name, not {name!r}.")
    raw = name.strip()
    if raw in EXTERNAL_NAMES:
        return raw
    if raw.lower().startswith("timm:"):
        model = raw[len("timm:"):].strip()
        if not model:
            raise GradCamError("timm: needs a model name after it, e.g. timm:resnet18.")
        return "timm:" + model
    key = raw.lower().removeprefix("torchvision:").strip().replace("-", "_")
    if key in ARCHITECTURES:
        return key
    from . import tv_models

    if key in tv_models.classifiers():
        return "torchvision:" + key
    raise GradCamError(_unknown(raw))


# ----------------------------------------------------------------------------- simple_cnn
def _simple_cnn(n_classes: int, in_channels: int, width: int = 16, depth: int = 4) -> "nn.Module":
    from collections import OrderedDict

    from torch import nn

    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    c_in = in_channels
    for i in range(depth):
        c_out = width * 2**i
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv1=nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            bn1=nn.BatchNorm2d(c_out),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            bn2=nn.BatchNorm2d(c_out),
            relu2=nn.ReLU(),
        )
        if i < depth - 1:
            layers["pool"] = nn.MaxPool2d(2)
        blocks[f"block{i + 1}"] = nn.Sequential(layers)
        c_in = c_out

    class SimpleCNN(nn.Module):
        """Conv blocks -> global average pooling -> linear: CAM-ready by construction."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(blocks)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(c_in, n_classes)

        def forward(self, x):  # (B, C, H, W) -> (B, n_classes) logits
            return self.classifier(self.pool(self.features(x)).flatten(1))

    return SimpleCNN()


# ----------------------------------------------------------------------------- ImageNet weights
def imagenet_weights_path(arch: Architecture) -> Path:
    """Where torchvision would cache this architecture's ImageNet weights (may not exist)."""
    import torch
    import torchvision.models as tvm

    weights = getattr(tvm, arch.weights_enum).DEFAULT  # type: ignore[arg-type]
    filename = os.path.basename(weights.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _load_pretrained(model: "nn.Module", arch: Architecture, pretrained: bool | str | os.PathLike) -> None:
    """Load ImageNet weights into a freshly built 3-channel torchvision model, never downloading."""
    import torch

    if arch.weights_enum is None:
        raise GradCamError(f"{arch.name} has no ImageNet weights; train it from scratch (pretrained=False).")
    path = imagenet_weights_path(arch) if pretrained is True else Path(pretrained)
    if not path.is_file():
        raise GradCamError(
            f"ImageNet weights for {arch.name} are not at {path}; put torchvision's file there "
            "(it is never downloaded here) or train from scratch."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4" on a junk file
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise GradCamError(
            f"{path.name} is not a readable PyTorch state dict of torchvision's {arch.name} ImageNet weights."
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError):
        raise GradCamError(
            f"The weights in {path.name} do not fit torchvision's 3-channel, 1000-class {arch.name}."
        ) from None


# ----------------------------------------------------------------------------- build
def build_network(
    name: str,
    n_classes: int,
    in_channels: int = 1,
    pretrained: bool | str | os.PathLike = False,
    input_size: int = 224,
) -> "nn.Module":
    """A bare ``nn.Module`` for architecture ``name``.

    Parameters
    ----------
    name : str
        A registered name (:func:`list_architectures`), any torchvision classifier (``convnext_tiny``
        or ``torchvision:convnext_tiny``) or ``timm:NAME``.
    n_classes : int
        Output size of the head (logits).
    in_channels : int
        1 (grayscale) or 3 (RGB). For 1 channel, the first convolution takes 1 channel;
        with ImageNet weights its kernels are the sum over the RGB kernels.
    pretrained : bool or path
        ``True``: torchvision's ImageNet weights from the torch hub cache; a path: a local
        state-dict file of the 3-channel, 1000-class model. Never downloads.
    input_size : int
        The input side in pixels; only constructors that fix it use it (ViT, MaxViT, timm ViTs).
    """
    if in_channels not in (1, 3):
        raise GradCamError(f"in_channels must be 1 (grayscale) or 3 (RGB), not {in_channels}.")
    if n_classes < 2:
        raise GradCamError(f"A classifier needs at least 2 classes, not {n_classes}.")
    canonical = canonical_name(name)
    if canonical.startswith("torchvision:"):
        from . import tv_models

        return tv_models.build(canonical.split(":", 1)[1], n_classes, in_channels, int(input_size), pretrained)
    if canonical.startswith("timm:"):
        from . import timm_models

        return timm_models.build(canonical.split(":", 1)[1], n_classes, in_channels, int(input_size), pretrained)
    if canonical in EXTERNAL_NAMES:
        raise GradCamError(f"A {canonical} model is not built by name: load its file with load_model"
                           + (" and give module=..." if canonical == "custom" else "") + ".")
    arch = get_architecture(canonical)
    if arch.torchvision_name is None:
        if pretrained:
            raise GradCamError("simple_cnn has no ImageNet weights; it trains from scratch.")
        return _simple_cnn(n_classes, in_channels)

    import torchvision.models as tvm

    model = getattr(tvm, arch.torchvision_name)(weights=None)
    if pretrained:
        _load_pretrained(model, arch, pretrained)
    replace_head(model, n_classes, arch.head)
    adapt_first_conv(model, in_channels, keep_weights=bool(pretrained), name=arch.first_conv)
    return model


_PROBE_SIZES = (16, 24, 32, 48, 64, 75, 96, 128, 160, 192, 224, 256, 299, 320, 384, 448, 512)


def check_input_size(name: str, in_channels: int, input_size: int) -> None:
    """Refuse, in one sentence naming a size that works, an input size the network cannot take.

    Registered architectures know their minimum; others are tried on the meta device (no memory, no
    arithmetic): one forward pass of a zero image, and on failure a few sizes to name the smallest that
    works.  Networks that cannot be built on the meta device are not checked here.
    """
    import torch

    canonical = canonical_name(name)
    if canonical in ARCHITECTURES:
        arch = ARCHITECTURES[canonical]
        if input_size < arch.min_input_size:
            raise GradCamError(f"{arch.name} needs an input_size of at least {arch.min_input_size} pixels, "
                               f"not {input_size}.")
        return
    if canonical.startswith("torchvision:"):
        from .tv_models import check_input_size as check_constructor

        check_constructor(canonical.split(":", 1)[1], input_size)
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_network(canonical, 2, in_channels, input_size=input_size).eval()
    except GradCamError:
        raise
    except Exception:  # noqa: BLE001 - e.g. RegNet's constructor computes on tensors; checked when run
        return

    def works(size: int) -> bool:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model(torch.zeros(1, in_channels, size, size, device="meta"))
            return True
        except Exception:  # noqa: BLE001 - any failure means "not at this size"
            return False

    if works(input_size) or any(k in canonical for k in ("vit", "swin", "deit", "beit", "eva")):
        return  # transformers fix their size in the constructor: a real pass decides
    sizes = [s for s in _PROBE_SIZES if works(s)]
    if not sizes:
        return  # the meta device cannot run this network: a real pass decides
    if sizes[0] > input_size:
        raise GradCamError(f"{canonical} needs an input_size of at least {sizes[0]} pixels, not {input_size}.")
    near = min(sizes, key=lambda s: abs(s - input_size))
    raise GradCamError(f"{canonical} cannot take {input_size}-pixel inputs ({near} works); choose another input_size.")


def pretrained_weights_file(name: str) -> Path | None:
    """Where the ImageNet weights of architecture ``name`` would be in the torch hub cache (the file
    may not exist); None when it has none (simple_cnn, timm models: give their file instead)."""
    canonical = canonical_name(name)
    arch = ARCHITECTURES.get(canonical)
    if arch is not None:
        return imagenet_weights_path(arch) if arch.weights_enum else None
    if canonical.startswith("torchvision:"):
        from .tv_models import weights_path

        return weights_path(canonical.split(":", 1)[1])
    return None


def head_layer(name: str, model: "nn.Module") -> str:
    """Dotted name of the classifier head of ``model`` (architecture ``name``): the registry's, else
    :func:`head_name`."""
    arch = ARCHITECTURES.get(name)
    return arch.head if arch is not None else head_name(model)


def channels_in_weights(name: str, tensors: dict) -> int | None:
    """The input channel count a state dict of architecture ``name`` was trained with, read from the
    first convolution's weight (its name found on a network built without memory); None if unknown."""
    import torch

    canonical = canonical_name(name)
    if canonical in ARCHITECTURES:
        first = ARCHITECTURES[canonical].first_conv
    else:
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                first = first_conv_name(build_network(canonical, 2, 3, input_size=224))
        except Exception:  # noqa: BLE001 - e.g. RegNet cannot be built on the meta device
            first = next((k[: -len(".weight")] for k, v in tensors.items()
                          if k.endswith(".weight") and getattr(v, "ndim", 0) == 4), None)
    weight = tensors.get(f"{first}.weight") if first else None
    return int(weight.shape[1]) if weight is not None and weight.ndim == 4 else None


def default_normalisation(name: str, in_channels: int, pretrained: bool = False,
                          model: "nn.Module | None" = None) -> tuple[list[float], list[float]]:
    """Mean and std (one per channel) the inputs of architecture ``name`` are normalised with.

    timm models: their ``pretrained_cfg``; torchvision ones: ImageNet's when ``pretrained`` (the
    weights' own), else mean 0.5, std 0.25 (what training from scratch here uses); simple_cnn the latter.
    One channel gets the averages of the RGB values.
    """
    canonical = canonical_name(name)
    if canonical.startswith("timm:") and model is not None:
        from .timm_models import normalisation

        return normalisation(model, in_channels)
    if not pretrained or canonical in ("simple_cnn", "custom", "onnx"):
        return [0.5] * in_channels, [0.25] * in_channels
    from .tv_models import pretrained_normalisation

    mean, std = pretrained_normalisation(canonical.split(":", 1)[-1])
    if in_channels == 1:
        return [round(sum(mean) / 3, 3)], [round(sum(std) / 3, 3)]
    return mean, std


def default_layer(model: "nn.Module", in_channels: int, input_size: int) -> str:
    """The default Grad-CAM layer of any classifier traced on one (1, in_channels, input_size, input_size)
    image (:func:`napari_gradcam.introspect.default_target_layer`), or "" when it has none (an MLP;
    pixel attributions still work)."""
    try:
        return default_target_layer(model, in_channels, input_size)
    except LayerError:
        return ""

"""Architecture registry: build classifiers by name, know their target layers.

Every architecture is a torchvision model (or our small ``simple_cnn``) whose
classification head is replaced for the class count and whose first convolution
is adapted to 1 or 3 input channels.  Each knows

* ``target_layer``: the default layer for Grad-CAM (the last convolutional block);
* ``cam``: where the global-average-pooling + linear head is, if it has one
  (CAM is defined only for those heads).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .errors import GradCamError, LayerError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


@dataclass(frozen=True)
class CamHead:
    """Where a CAM-ready head lives in a model.

    ``features`` is the module whose output (B, K, h, w) is globally average
    pooled, ``linear`` the ``nn.Linear(K, n_classes)`` applied to the pooled
    vector, and ``relu`` says whether a ReLU is applied between them
    (torchvision's DenseNet does this functionally).
    """

    features: str
    linear: str
    relu: bool = False


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


def list_architectures() -> list[str]:
    """Names accepted by :func:`build_model`, in a stable order."""
    return list(ARCHITECTURES)


def get_architecture(name: str) -> Architecture:
    """The :class:`Architecture` called ``name``, or a clear error naming the valid ones."""
    key = name.strip().lower().replace("-", "_")
    if key not in ARCHITECTURES:
        raise GradCamError(
            f"Unknown architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}."
        )
    return ARCHITECTURES[key]


#: architectures that are not in the registry: a module handed over in Python, an ONNX graph, and
#: (prefixes) networks built by another library.  Their target layer and CAM head are found from the
#: module itself (:mod:`napari_gradcam.engine.discover`).
EXTERNAL_NAMES = ("custom", "onnx")
EXTERNAL_PREFIXES = ("torchvision:", "timm:")


def find_architecture(name: str) -> Architecture | None:
    """The registered :class:`Architecture` called ``name``; None for an external one
    (``custom``, ``onnx``, ``torchvision:NAME``, ``timm:NAME``); a clear error otherwise."""
    if isinstance(name, str) and (name in EXTERNAL_NAMES or name.startswith(EXTERNAL_PREFIXES)):
        return None
    return get_architecture(name)


# ----------------------------------------------------------------------------- modules by name
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
) -> "nn.Module":
    """A bare ``nn.Module`` for architecture ``name``.

    Parameters
    ----------
    name : str
        One of :func:`list_architectures`.
    n_classes : int
        Output size of the new head (logits).
    in_channels : int
        1 (grayscale) or 3 (RGB). For 1 channel, the first convolution takes 1 channel;
        with ImageNet weights its kernels are the sum over the RGB kernels.
    pretrained : bool or path
        ``True``: torchvision's ImageNet weights from the torch hub cache; a path: a local
        state-dict file of the 3-channel, 1000-class torchvision model. Never downloads.
    """
    from torch import nn

    arch = get_architecture(name)
    if in_channels not in (1, 3):
        raise GradCamError(f"in_channels must be 1 (grayscale) or 3 (RGB), not {in_channels}.")
    if n_classes < 2:
        raise GradCamError(f"A classifier needs at least 2 classes, not {n_classes}.")
    if arch.torchvision_name is None:
        if pretrained:
            raise GradCamError("simple_cnn has no ImageNet weights; it trains from scratch.")
        return _simple_cnn(n_classes, in_channels)

    import torch
    import torchvision.models as tvm

    model = getattr(tvm, arch.torchvision_name)(weights=None)
    if pretrained:
        _load_pretrained(model, arch, pretrained)
    old_head = get_module(model, arch.head)
    set_module(model, arch.head, nn.Linear(old_head.in_features, n_classes))
    if in_channels != 3:
        old = get_module(model, arch.first_conv)
        new = nn.Conv2d(
            in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
            old.dilation, old.groups, old.bias is not None, old.padding_mode,
        )
        if pretrained:
            with torch.no_grad():
                new.weight.copy_(old.weight.sum(dim=1, keepdim=True))
                if old.bias is not None:
                    new.bias.copy_(old.bias)
        set_module(model, arch.first_conv, new)
    return model


def spatial_layers(model: "nn.Module", in_channels: int, input_size: int, max_depth: int | None = None) -> list[str]:
    """Dotted names of the layers whose output is a spatial map (B, K, h, w), tokens on a patch grid or a
    channels-last map (:mod:`napari_gradcam.engine.layout`), in execution order.

    Found by one forward pass of a zero image, so the list is exact for any model.
    Global pooling layers (an adaptive pool to 1 x 1) are left out: their "map" is one
    pixel, useless as a heatmap.
    ``max_depth`` keeps names with at most that many dots + 1 parts (``layer4`` is depth 1,
    ``layer4.1`` depth 2).
    """
    import torch

    seen: list[str] = []
    handles = []

    from torch import nn

    global_pools = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

    from .engine.layout import layout_of  # maps, tokens and channels-last outputs all count

    def make_hook(name: str) -> Callable:
        def hook(module, _inputs, output):
            if layout_of(output, min_cells=1) is None or name in seen:
                return
            if isinstance(module, global_pools) and tuple(output.shape[-2:]) == (1, 1):
                return
            seen.append(name)
        return hook

    for name, module in model.named_modules():
        if name and (max_depth is None or name.count(".") < max_depth):
            handles.append(module.register_forward_hook(make_hook(name)))
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(torch.zeros(1, in_channels, input_size, input_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen

"""ModelBundle: a network plus what is needed to use it (classes, input geometry, normalisation).

:func:`build_model` builds one by architecture name, :func:`wrap_model` wraps any ``nn.Module``.
``ModelConfig.architecture`` records where the network comes from: ``simple_cnn`` and the other
registered names, ``torchvision:NAME``, ``timm:NAME``, ``onnx`` or ``custom`` (a module built in Python).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from .. import models
from ..errors import GradCamError, ParameterError
from .diagnose import brief, first_line
from .projection import install

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def runnable_devices() -> list[str]:
    """The device names a model can run on here: "auto", "cpu", then "cuda", "cuda:N" and "mps" where present."""
    import torch

    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve_device(device: "str | torch.device | None" = "auto") -> "torch.device":
    """``"auto"`` (or None) -> cuda if available, then mps, then cpu; otherwise ``torch.device(device)``.

    Raises ParameterError (a GradCamError) for anything that cannot run a model here: an unknown
    name, a device type other than cpu, cuda and mps ("meta", "xpu"), cuda/mps when not available;
    the sentence lists what can run.
    """
    import torch

    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    can = ", ".join(runnable_devices())
    if not isinstance(device, (str, torch.device)):
        raise ParameterError(f"device must be a name such as 'cpu', not {brief(device, 60)}; this machine can run on {can}.")
    try:
        dev = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError):
        raise ParameterError(f"Unknown device {device!r}; this machine can run on {can}.") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ParameterError(f"Device {str(device)!r} cannot run a model here; this machine can run on {can}.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"CUDA was asked for but no CUDA device is available; this machine can run on {can}.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ParameterError(f"There is no CUDA device {dev.index}; this machine has {torch.cuda.device_count()} "
                             f"and can run on {can}.")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ParameterError(f"MPS (Apple GPU) was asked for but is not available; this machine can run on {can}.")
    return dev


@dataclass
class ModelConfig:
    """Everything about a model except its weights (stored as JSON in the file).

    ``origin`` holds what an external network needs beyond its name (a custom module's Python class,
    an ONNX graph's input name); it is empty for networks built by name.
    """

    architecture: str
    classes: list[str]
    in_channels: int = 1
    input_size: int = 224
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.25])
    target_layer: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Check every field (types and values), normalise the architecture name, fill the target layer.

        Raises GradCamError with one sentence naming the bad field.
        """
        if not isinstance(self.architecture, str):
            raise GradCamError(f"architecture must be a name, not {brief(self.architecture)}.")
        if not isinstance(self.classes, (list, tuple)) or not all(isinstance(c, str) for c in self.classes):
            raise GradCamError(f"classes must be a list of class names, not {brief(self.classes)}.")
        self.classes = list(self.classes)
        for name in ("in_channels", "input_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise GradCamError(f"{name} must be an integer, not {brief(value)}.")
            setattr(self, name, int(value))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value
            ):
                raise GradCamError(f"{name} must be a list of finite numbers, not {brief(value)}.")
            setattr(self, name, [float(v) for v in value])
        if not isinstance(self.target_layer, str):
            raise GradCamError(f"target_layer must be a layer name, not {brief(self.target_layer)}.")
        for name in ("training", "origin"):
            if not isinstance(getattr(self, name), dict):
                raise GradCamError(f"{name} must be a mapping, not {type(getattr(self, name)).__name__}.")
        self.architecture = models.canonical_name(self.architecture)
        arch = models.ARCHITECTURES.get(self.architecture)
        if arch is not None and not self.target_layer:
            self.target_layer = arch.target_layer
        self._validate_values(arch)

    def _validate_values(self, arch) -> None:
        if len(self.classes) < 2:
            raise GradCamError(f"A classifier needs at least 2 classes, got {brief(list(self.classes))}.")
        if len(set(self.classes)) != len(self.classes):
            raise GradCamError(f"Class names must be unique, got {brief(list(self.classes))}.")
        bad = [c for c in self.classes if not c.strip() or not c.isprintable()]
        if bad:
            raise GradCamError(f"Class names must be non-empty text on one line, not {brief(bad[0], 60)}.")
        if self.in_channels not in (1, 3):
            raise GradCamError(f"in_channels must be 1 or 3, not {self.in_channels}.")
        if not 16 <= int(self.input_size) <= 4096:
            raise GradCamError(f"input_size must be between 16 and 4096 pixels, not {self.input_size}.")
        if arch is not None and int(self.input_size) < arch.min_input_size:
            raise GradCamError(
                f"{arch.name} needs an input_size of at least {arch.min_input_size} pixels, not {self.input_size}."
            )
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise GradCamError("mean and std need one value per input channel.")
        if any(s <= 0 for s in self.std):
            raise GradCamError("std values must be positive.")


@dataclass
class ModelBundle:
    """A classifier ready to use: the network (eval mode, on ``device``) and its config.

    Attributes
    ----------
    model : torch.nn.Module
        Maps (B, in_channels, input_size, input_size) float32 to (B, n_classes) logits.
    config : ModelConfig
        Architecture, classes, input geometry, normalisation, target layer, training summary.
    notes : list of str
        What loading assumed and a user should know (e.g. the normalisation used when the file does
        not say); the CLI prints them, the napari widget shows them.
    onnx_graph : bytes or None
        The ONNX model an ``onnx`` bundle was converted from (saved with the bundle, so that loading it
        rebuilds the graph without the ``.onnx`` file).
    projections : list of Projection
        Directions removed from layers' activations (P-ClArC), applied on every forward pass.
    """

    model: "nn.Module"
    config: ModelConfig
    notes: list[str] = field(default_factory=list, repr=False, compare=False)
    onnx_graph: bytes | None = field(default=None, repr=False, compare=False)
    #: Concept directions projected out of layers' activations (P-ClArC, :mod:`.projection`); installed as
    #: forward hooks on ``model`` when the bundle is made, saved with it.
    projections: list = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.projections:
            install(self.model, self.projections)

    # convenient read-only views of the config
    @property
    def architecture(self) -> str:
        return self.config.architecture

    @property
    def classes(self) -> list[str]:
        return list(self.config.classes)

    @property
    def n_classes(self) -> int:
        return len(self.config.classes)

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def input_size(self) -> int:
        return int(self.config.input_size)

    @property
    def target_layer(self) -> str:
        return self.config.target_layer

    @property
    def device(self) -> "torch.device":
        import torch

        param = next(iter(self.model.parameters()), None)
        return param.device if param is not None else torch.device("cpu")

    def to(self, device: "str | torch.device | None") -> "ModelBundle":
        """Move the network to ``device`` ("auto", "cpu", "cuda", "mps"); returns self."""
        self.model.to(resolve_device(device))
        return self

    def class_index(self, target: "int | str") -> int:
        """Index of a class given by name or index (an int or numpy integer, not a bool or a float),
        with a clear error (ParameterError for a wrong type, GradCamError for an unknown class)."""
        from ..validate import is_integer

        if isinstance(target, str):
            if target not in self.config.classes:
                raise GradCamError(f"Unknown class {brief(target, 80)}; the model's classes are "
                                   f"{brief(self.classes, 200)}.")
            return self.config.classes.index(target)
        if not is_integer(target):
            raise ParameterError(f"A target class is a class name or an integer index, not {brief(target, 60)}.")
        idx = int(target)
        if not 0 <= idx < self.n_classes:
            raise GradCamError(f"Class index {idx} is out of range for {self.n_classes} classes.")
        return idx

    def layers(self, max_depth: int | None = 3) -> list[str]:
        """Dotted names of the layers with spatial output, usable as Grad-CAM target layers."""
        return models.spatial_layers(self.model, self.in_channels, self.input_size, max_depth)

    def __repr__(self) -> str:
        return (
            f"ModelBundle({self.architecture}, classes={self.classes}, in_channels={self.in_channels}, "
            f"input_size={self.input_size}, device={self.device})"
        )


def build_model(
    architecture: str,
    classes: Sequence[str],
    in_channels: int = 1,
    input_size: int = 224,
    pretrained: bool | str | os.PathLike = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    target_layer: str | None = None,
    device: str | None = "cpu",
) -> ModelBundle:
    """Build an (untrained, or ImageNet-initialised) classifier by architecture name.

    ``architecture`` is a registered name (``simple_cnn``, ``resnet18``, ...), any torchvision
    classification model (``convnext_tiny``, recorded as ``torchvision:convnext_tiny``) or
    ``timm:NAME`` (with the optional timm package).  Normalisation defaults to the weights' own for
    pretrained models (ImageNet's; the gray average for one channel), to timm's ``pretrained_cfg``
    for timm models, and to mean 0.5, std 0.25 otherwise (images are first scaled to [0, 1]).  The
    target layer defaults to the registry's, or to the one found from the module
    (:func:`napari_gradcam.models.default_layer`).
    """
    from ..validate import check_int

    if isinstance(classes, (str, bytes)) or not (isinstance(classes, Sequence) or type(classes).__name__ == "ndarray"):
        raise ParameterError(f"classes must be a list of class names, not {brief(classes, 60)}.")
    classes = [str(c) for c in classes]
    in_channels = check_int(in_channels, "in_channels", 1)
    input_size = check_int(input_size, "input_size", 1)
    config = ModelConfig(architecture, classes, in_channels, input_size, [0.5] * _int(in_channels),
                         [0.25] * _int(in_channels), target_layer or "")
    config.validate()
    models.check_input_size(config.architecture, config.in_channels, config.input_size)
    model = models.build_network(config.architecture, len(classes), config.in_channels, pretrained,
                                 input_size=config.input_size)
    model.eval()
    if mean is None or std is None:
        mean, std = models.default_normalisation(config.architecture, config.in_channels, bool(pretrained), model)
    config.mean, config.std = [float(m) for m in mean], [float(s) for s in std]
    config.validate()
    if not config.target_layer:
        config.target_layer = _traced_layer(model, config)
    models.get_module(model, config.target_layer)  # validates the name
    return ModelBundle(model, config).to(device)


def _int(value) -> int:
    """``value`` as an int for list lengths, leaving the sentence about a bad value to validate()."""
    try:
        return max(0, min(int(value), 16))
    except (TypeError, ValueError):
        return 1


def _traced_layer(model: "nn.Module", config: ModelConfig) -> str:
    """The default layer found by one forward pass; a failing pass is one sentence about the input size."""
    try:
        return models.default_layer(model, config.in_channels, config.input_size)
    except GradCamError:
        raise
    except Exception as e:  # noqa: BLE001 - the network's own shape errors
        raise GradCamError(f"{config.architecture} cannot take {config.in_channels} x {config.input_size} x "
                           f"{config.input_size} inputs ({first_line(e, 160)}); choose another input_size.") from None


def wrap_model(
    module: "nn.Module",
    classes: Sequence[str],
    input_size: int = 224,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    target_layer: str | None = None,
    architecture: str = "custom",
) -> ModelBundle:
    """A :class:`ModelBundle` around any classifier ``module`` built in Python.

    ``module`` maps (B, in_channels, input_size, input_size) float32 to (B, len(classes)) logits.
    Normalisation defaults to ImageNet's (its gray mean for one channel); images are first scaled
    to [0, 1].  The target layer defaults to the last layer with a spatial output, and a CAM head
    is found from the module itself (:mod:`napari_gradcam.introspect`).  The architecture is
    recorded as ``"custom"`` with the module's class name: a saved bundle is loaded again with
    ``load_model(path, module=TheClass(...))``.
    """
    import torch
    from torch import nn

    if not isinstance(module, nn.Module):
        raise GradCamError(f"wrap_model needs a torch.nn.Module, not {type(module).__name__}.")
    if mean is None or std is None:
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else ([0.449], [0.226])
    config = ModelConfig(architecture, [str(c) for c in classes], in_channels, input_size,
                         list(mean), list(std), target_layer or "")
    config.validate()
    if config.architecture == "custom":
        config.origin = {"class": f"{type(module).__module__}.{type(module).__qualname__}"}
    module.eval()
    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.inference_mode():
        out = module(torch.zeros(1, config.in_channels, config.input_size, config.input_size, device=device))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, len(config.classes)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise GradCamError(f"The module returns {shape} for one {config.in_channels} x {config.input_size} x "
                           f"{config.input_size} image; a classifier of {len(config.classes)} classes must return "
                           f"(1, {len(config.classes)}) logits.")
    if config.target_layer:
        models.get_module(module, config.target_layer)
    else:
        config.target_layer = models.default_layer(module, config.in_channels, config.input_size)
    return ModelBundle(module, config)

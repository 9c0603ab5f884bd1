"""``load_model``: any model file to a :class:`ModelBundle`, without running code from it.

* a napari-gradcam bundle (``.safetensors``) describes itself;
* bare weights (a ``.pt``/``.pth``/``.bin`` state dict, a foreign ``.safetensors``) need the
  architecture and the class names; the channel count is read from the first convolution, the input
  size defaults to 224 (a ViT's from its position embedding) and the normalisation to the
  architecture's convention (ImageNet's for torchvision and timm, told in ``bundle.notes``);
* an ONNX file (``.onnx``) is converted with onnx2torch and needs the class names;
* ``module=`` loads the weights of any of these into a network the caller built (a ``custom`` bundle
  needs it: a weights-only file cannot carry Python code).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .. import models
from ..errors import GradCamError, ModelFileError, ParameterError
from . import diagnose, files
from .core import IMAGENET_MEAN, IMAGENET_STD, ModelBundle, ModelConfig, wrap_model
from .diagnose import brief, shown

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


def load_model(
    path: str | os.PathLike,
    architecture: str | None = None,
    classes: Sequence[str] | None = None,
    in_channels: int | None = None,
    input_size: int | None = None,
    device: str | None = "auto",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    module: "nn.Module | None" = None,
) -> ModelBundle:
    """Load a model bundle (``.safetensors``), a plain state dict or an ONNX model, without running code.

    For a napari-gradcam ``.safetensors`` file everything comes from its metadata (arguments
    given here must agree with it).  For a state dict (``.pt``/``.pth``/``.bin``) or a foreign
    ``.safetensors`` file, ``architecture`` and ``classes`` are required; ``in_channels`` is
    read from the first convolution when not given, ``input_size`` defaults to 224, and ``mean`` /
    ``std`` to the architecture's convention (ImageNet's for torchvision and timm networks; what was
    assumed is in ``bundle.notes``).  For an ``.onnx`` file ``classes`` is required; the channels and
    size come from the graph's input.  ``module``: load the weights into this ``nn.Module`` instead of
    building one (needed for bundles saved from a custom module).

    Raises
    ------
    ModelFileError
        Missing, empty, truncated, foreign, code-carrying or mismatching files; one sentence.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ParameterError(f"load_model needs the path of a model file, not {brief(path, 60)}.")
    from .core import resolve_device

    resolve_device(device)  # a device that cannot run is refused before the file is read
    request = dict(architecture=architecture, classes=classes, in_channels=in_channels, input_size=input_size,
                   mean=mean, std=std)
    try:
        bundle = _load(Path(path), request, module)
    except ModelFileError as e:
        if str(e).isprintable():
            raise
        raise ModelFileError(shown(str(e))) from None  # e.g. a file name with a newline: still one line
    except GradCamError as e:
        raise ModelFileError(str(e) if str(e).isprintable() else shown(str(e))) from None
    return bundle.to(device)


def _load(path: Path, request: dict, module: "nn.Module | None") -> ModelBundle:
    diagnose.check_path(path)
    if path.suffix.lower() == ".onnx":
        return _from_onnx_file(path, request, module)
    config: ModelConfig | None = None
    found: list = []
    if files.is_safetensors(path):
        tensors, metadata = files.read_safetensors(path)
        config = files.config_from_metadata(path, metadata)
        if config is not None:  # P-ClArC projections: numbers and text, hooked by our own code
            from .projection import take_from_file

            found = take_from_file(shown(path.name), tensors, metadata)
    elif path.suffix == ".safetensors":
        raise ModelFileError(f"{path.name} is not a readable .safetensors file (truncated or corrupted header).")
    else:
        tensors = files.read_state_dict(path)
    if config is None:
        return _from_bare_weights(path, tensors, request, module)
    _check_agrees(path, config, request)
    bundle = _described(path, config, tensors, module)
    if found:
        from .projection import attach, check_layers, describe

        check_layers(shown(path.name), bundle, found)  # before the hooks: a wrong length is refused here
        attach(bundle, found)
        bundle.notes = list(bundle.notes) + [f"{path.name} projects out {line}." for line in describe(found)]
    return bundle


def _described(path: Path, config: ModelConfig, tensors: dict, module: "nn.Module | None") -> ModelBundle:
    """The bundle a self-describing file holds (``tensors``: its weights)."""
    if module is not None:
        tensors.pop(files.ONNX_KEY, None)
        return _into_module(path, module, config, tensors, config.mean, config.std, [])
    if config.architecture == "onnx":
        return _from_onnx_bundle(path, config, tensors)
    if config.architecture == "custom":
        cls = config.origin.get("class") or "the network's class"
        short = str(cls).rsplit(".", 1)[-1]
        raise ModelFileError(
            f"{path.name} holds the weights of a network built in Python ({brief(cls, 80)}); a weights-only file "
            f"cannot carry its code: build it and load with load_model(path, module={short}(...))."
        )
    model = _build_and_fill(path, config, tensors)
    return _finish(path, ModelBundle(model, config))


def _check_agrees(path: Path, config: ModelConfig, request: dict) -> None:
    """Arguments given for a self-describing bundle must agree with it."""
    given = request["architecture"]
    if given is not None:
        try:
            same = models.canonical_name(str(given)) == config.architecture
        except GradCamError:
            same = False
        if not same:
            raise ModelFileError(f"{path.name} holds a {config.architecture} model, not {given}.")
    for name in ("in_channels", "input_size"):
        if request[name] is not None and int(request[name]) != getattr(config, name):
            raise ModelFileError(f"{path.name} is a {name}={getattr(config, name)} model, not {request[name]}.")
    if request["classes"] is not None and list(request["classes"]) != config.classes:
        raise ModelFileError(f"{path.name} has classes {brief(config.classes)}, not {brief(list(request['classes']))}.")
    for name in ("mean", "std"):
        if request[name] is not None and [float(v) for v in request[name]] != getattr(config, name):
            raise ModelFileError(f"{path.name} stores {name} {getattr(config, name)}, not {list(request[name])}.")


# ----------------------------------------------------------------------------- networks by name
def _expected_state(config: ModelConfig) -> tuple[dict, str | None, str | None]:
    """The state dict (on the meta device: no memory) of the network ``config`` describes, with the
    names of its head and first convolution.  Networks whose constructor computes on tensors (RegNet)
    are built for 2 classes on the CPU and their head's shape is set to the class count."""
    import torch

    arch = models.ARCHITECTURES.get(config.architecture)
    n, c, s = len(config.classes), config.in_channels, config.input_size
    try:
        with torch.device("meta"):
            net = models.build_network(config.architecture, n, c, input_size=s)
        expected = net.state_dict()
    except GradCamError:
        raise
    except Exception:  # noqa: BLE001 - cannot be built on the meta device
        net = models.build_network(config.architecture, 2, c, input_size=s)
        expected = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in net.state_dict().items()}
        head = models.head_name(net)
        for key in (f"{head}.weight", f"{head}.bias"):
            if key in expected:
                expected[key] = torch.empty((n, *expected[key].shape[1:]), dtype=expected[key].dtype, device="meta")
    head = arch.head if arch else models.head_name(net)
    first = arch.first_conv if arch else models.first_conv_name(net)
    return expected, head, first


def _build_and_fill(path: Path, config: ModelConfig, tensors: dict) -> "nn.Module":
    """The network ``config`` names, holding the file's weights; mismatches are one sentence, found
    before any memory is allocated for the network (metadata may ask for anything)."""
    expected, head, first = _expected_state(config)
    diagnose.check_fit(path, config, tensors, expected, head, first)
    model = models.build_network(config.architecture, len(config.classes), config.in_channels,
                                 input_size=config.input_size)
    try:
        model.load_state_dict(_with_versions(tensors, model), strict=True)
    except RuntimeError as e:
        raise diagnose.fit_error(path, config, e) from None
    return model.eval()


def _with_versions(tensors: dict, model: "nn.Module") -> dict:
    """``tensors`` with the module versions ``load_state_dict`` reads (MNASNet refuses weights without
    them); safetensors files do not keep them, so they are the versions of the code that loads them."""
    from collections import OrderedDict

    if getattr(tensors, "_metadata", None) is not None:
        return tensors
    out = OrderedDict(tensors)
    out._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    return out


def _finish(path: Path, bundle: ModelBundle) -> ModelBundle:
    """Fill or check the target layer; refuse NaN or infinite weights and impossible BatchNorm statistics."""
    from ..numerics import check_weights

    config, model = bundle.config, bundle.model
    if not config.target_layer:
        config.target_layer = models.default_layer(model, config.in_channels, config.input_size)
    try:
        models.get_module(model, config.target_layer)
    except GradCamError:
        raise ModelFileError(f"{path.name} names a target layer {config.target_layer!r} the model does not have.") \
            from None
    model.eval()
    check_weights(model, path.name, error=ModelFileError)  # NaN weights, negative BatchNorm variance
    return bundle


# ----------------------------------------------------------------------------- bare weights
def _bare_description(path: Path, tensors: dict, request: dict) -> ModelConfig:
    """The config of bare weights from what the caller said and what the weights show."""
    architecture, classes = request["architecture"], request["classes"]
    if not architecture or not classes:
        raise ModelFileError(
            f"{path.name} holds bare weights with no description; give the architecture and the class names "
            "(--arch and --classes on the command line)."
        )
    canonical = models.canonical_name(str(architecture))
    if canonical in models.EXTERNAL_NAMES:
        raise ModelFileError(f"Bare weights cannot be loaded as {canonical}; give the network's architecture name"
                             + (" or module=..." if canonical == "custom" else "") + ".")
    c = request["in_channels"]
    if c is None:
        c = models.channels_in_weights(canonical, tensors) or 1
    size = request["input_size"]
    if size is None and canonical.startswith("torchvision:"):
        from ..tv_models import input_size_from_weights

        size = input_size_from_weights(canonical.split(":", 1)[1], tensors)
    size = 224 if size is None else size  # 0 is refused by validate(), never read as "the default"
    config = ModelConfig(canonical, [str(k) for k in classes], int(c), int(size), [0.5] * int(c), [0.25] * int(c))
    config.validate()
    return config


def _from_bare_weights(path: Path, tensors: dict, request: dict, module: "nn.Module | None") -> ModelBundle:
    if module is not None:
        if not request["classes"]:
            raise ModelFileError(f"{path.name} holds bare weights; give the class names with module=.")
        c = int(request["in_channels"] or _module_channels(module))
        size = request["input_size"]
        config = ModelConfig("custom", [str(k) for k in request["classes"]], c, int(224 if size is None else size))
        mean, std, notes = request["mean"], request["std"], []
        if mean is None or std is None:
            mean, std = (IMAGENET_MEAN, IMAGENET_STD) if c == 3 else ([0.449], [0.226])
            notes.append(f"{path.name} does not say how its inputs were normalised; using ImageNet's (give "
                         "mean=/std= if it was trained otherwise).")
        return _into_module(path, module, config, tensors, mean, std, notes)
    config = _bare_description(path, tensors, request)
    model = _build_and_fill(path, config, tensors)
    notes = _set_normalisation(path, config, model, request)
    return _finish(path, ModelBundle(model, config, notes))


def _set_normalisation(path: Path, config: ModelConfig, model: "nn.Module", request: dict) -> list[str]:
    """The given mean/std, else the architecture's convention, with a note saying which was assumed."""
    if request["mean"] is not None and request["std"] is not None:
        config.mean, config.std = [float(v) for v in request["mean"]], [float(v) for v in request["std"]]
        config.validate()
        return []
    if request["mean"] is not None or request["std"] is not None:
        raise ModelFileError("Give both mean and std, or neither.")
    family = config.architecture in models.ARCHITECTURES and config.architecture != "simple_cnn"
    family = family or config.architecture.startswith(("torchvision:", "timm:"))
    config.mean, config.std = models.default_normalisation(config.architecture, config.in_channels, family, model)
    config.validate()
    which = ("the model's timm pretrained_cfg" if config.architecture.startswith("timm:")
             else "ImageNet's, as torchvision's weights use" if family else "napari-gradcam's training default")
    return [f"{path.name} does not say how its inputs were normalised; using {which}: mean "
            f"{_numbers(config.mean)}, std {_numbers(config.std)} (give --mean/--std, or mean=/std=, if it was "
            "trained otherwise)."]


def _numbers(values) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _module_channels(module: "nn.Module") -> int:
    try:
        return int(models.get_module(module, models.first_conv_name(module)).in_channels)
    except GradCamError:
        return 3


def _into_module(path: Path, module: "nn.Module", config: ModelConfig, tensors: dict, mean, std,
                 notes: list[str]) -> ModelBundle:
    """The file's weights in the caller's ``module`` (strictly: every name and shape must match),
    described by ``config`` (classes, geometry, target layer) and ``mean``/``std``."""
    from torch import nn

    if not isinstance(module, nn.Module):
        raise ModelFileError(f"module must be a torch.nn.Module, not {type(module).__name__}.")
    try:
        module.load_state_dict(_with_versions(tensors, module), strict=True)
    except RuntimeError as e:
        raise diagnose.fit_error(path, ModelConfig(type(module).__name__, config.classes, config.in_channels,
                                                   config.input_size), e) from None
    bundle = wrap_model(module, config.classes, config.input_size, config.in_channels, mean, std,
                        config.target_layer or None)
    bundle.config.training = dict(config.training)
    bundle.notes = notes
    return _finish(path, bundle)


# ----------------------------------------------------------------------------- ONNX
def _from_onnx_file(path: Path, request: dict, module) -> ModelBundle:
    from .onnx_import import MAX_ONNX_BYTES, convert, fingerprint

    if module is not None:
        raise ModelFileError("An ONNX file holds its own network; module= is for weights files.")
    if request["architecture"] not in (None, "onnx"):
        raise ModelFileError(f"{path.name} is an ONNX model, not {request['architecture']}.")
    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise ModelFileError(f"{path.name} is {size / 2**30:.1f} GiB; ONNX models up to 4 GiB are loaded.")
    data = path.read_bytes()
    net, info = convert(data, path.name)
    classes = request["classes"]
    if not classes:
        raise ModelFileError(f"{path.name} is an ONNX model without class names; give them (classes=[...], "
                             "or --classes on the command line).")
    if info.n_outputs is not None and info.n_outputs != len(classes):
        raise ModelFileError(f"The ONNX model in {path.name} gives {info.n_outputs} class scores, but "
                             f"{len(classes)} class names were given.")
    c = _agree(path, "in_channels", info.in_channels, request["in_channels"], 3)
    s = _agree(path, "input_size", info.input_size, request["input_size"], 224)
    notes = [f"{path.name} ends in a Softmax, which was removed so that the model gives logits."] \
        if info.softmax_removed else []
    mean, std = request["mean"], request["std"]
    if mean is None or std is None:
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if c == 3 else ([0.449], [0.226])
        notes.append(f"{path.name} does not say how its inputs were normalised; using ImageNet's: mean "
                     f"{_numbers(mean)}, std {_numbers(std)} (give --mean/--std, or mean=/std=, if it was trained "
                     "otherwise; mean 0 and std 0.0039216 feed a 0-255 range).")
    bundle = wrap_model(net, [str(k) for k in classes], s, c, mean, std, architecture="onnx")
    bundle.config.origin = {"input": info.input_name, "softmax_removed": info.softmax_removed,
                            "weights_sha256": fingerprint(net)}
    bundle.notes, bundle.onnx_graph = notes, data
    return _finish(path, bundle)


def _agree(path: Path, name: str, stored: int | None, given: int | None, default: int) -> int:
    if stored is not None and given is not None and int(given) != stored:
        raise ModelFileError(f"The ONNX model in {path.name} takes {name}={stored}, not {given}.")
    return int(stored if stored is not None else given if given is not None else default)


def _from_onnx_bundle(path: Path, config: ModelConfig, tensors: dict) -> ModelBundle:
    from .onnx_import import convert

    graph = tensors.pop(files.ONNX_KEY, None)
    if graph is None or graph.ndim != 1:
        raise ModelFileError(f"{path.name} is an onnx bundle without its ONNX graph.")
    data = graph.numpy().tobytes()
    net, _ = convert(data, path.name)
    if tensors:  # weights changed after the conversion (fine-tuned)
        try:
            net.load_state_dict(_with_versions(tensors, net), strict=True)
        except RuntimeError as e:
            raise diagnose.fit_error(path, config, e) from None
    return _finish(path, ModelBundle(net, config, [], data))

"""ModelBundle: a network plus what is needed to use it; safe save and load.

File format (``.safetensors``): the model's ``state_dict`` tensors, and in the
safetensors header's string metadata::

    {"format": "napari-gradcam", "format_version": "1", "config": "<JSON>"}

where ``config`` holds architecture, classes, in_channels, input_size, mean, std,
target_layer and the training summary.  Loading parses JSON and raw tensors only:
no code runs.  Plain PyTorch state dicts (``.pt``/``.pth``) load through
``torch.load(weights_only=True)``; anything needing code to unpickle is refused.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .errors import GradCamError, ModelFileError, ParameterError
from .errors import shown as _shown
from .models import build_network, find_architecture, get_architecture, get_module, spatial_layers

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

FORMAT = "napari-gradcam"
FORMAT_VERSION = 1


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
        raise ParameterError(f"device must be a name such as 'cpu', not {_brief(device, 60)}; this machine can run on {can}.")
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
    """Everything about a model except its weights (stored as JSON in the file)."""

    architecture: str
    classes: list[str]
    in_channels: int = 1
    input_size: int = 224
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.25])
    target_layer: str = ""
    training: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Check every field (types and values), normalise the architecture name, fill the target layer.

        Raises GradCamError with one sentence naming the bad field.
        """
        if not isinstance(self.architecture, str):
            raise GradCamError(f"architecture must be a name, not {_brief(self.architecture)}.")
        if not isinstance(self.classes, (list, tuple)) or not all(isinstance(c, str) for c in self.classes):
            raise GradCamError(f"classes must be a list of class names, not {_brief(self.classes)}.")
        self.classes = list(self.classes)
        for name in ("in_channels", "input_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise GradCamError(f"{name} must be an integer, not {_brief(value)}.")
            setattr(self, name, int(value))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value
            ):
                raise GradCamError(f"{name} must be a list of finite numbers, not {_brief(value)}.")
            setattr(self, name, [float(v) for v in value])
        if not isinstance(self.target_layer, str):
            raise GradCamError(f"target_layer must be a layer name, not {_brief(self.target_layer)}.")
        if not isinstance(self.training, dict):
            raise GradCamError(f"training must be a mapping, not {type(self.training).__name__}.")
        arch = find_architecture(self.architecture)
        if arch is not None:
            self.architecture = arch.name
            if not self.target_layer:
                self.target_layer = arch.target_layer
        if len(self.classes) < 2:
            raise GradCamError(f"A classifier needs at least 2 classes, got {_brief(list(self.classes))}.")
        if len(set(self.classes)) != len(self.classes):
            raise GradCamError(f"Class names must be unique, got {_brief(list(self.classes))}.")
        bad = [c for c in self.classes if not c.strip() or not c.isprintable()]
        if bad:
            raise GradCamError(f"Class names must be non-empty text on one line, not {_brief(bad[0], 60)}.")
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
    """

    model: "nn.Module"
    config: ModelConfig

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
        return next(self.model.parameters()).device

    def to(self, device: "str | torch.device | None") -> "ModelBundle":
        """Move the network to ``device`` ("auto", "cpu", "cuda", "mps"); returns self."""
        self.model.to(resolve_device(device))
        return self

    def class_index(self, target: "int | str") -> int:
        """Index of a class given by name or index (an int or numpy integer, not a bool or a float),
        with a clear error (ParameterError for a wrong type, GradCamError for an unknown class)."""
        from .validate import is_integer

        if isinstance(target, str):
            if target not in self.config.classes:
                raise GradCamError(f"Unknown class {_brief(target, 80)}; the model's classes are "
                                   f"{_brief(self.classes, 200)}.")
            return self.config.classes.index(target)
        if not is_integer(target):
            raise ParameterError(f"A target class is a class name or an integer index, not {_brief(target, 60)}.")
        idx = int(target)
        if not 0 <= idx < self.n_classes:
            raise GradCamError(f"Class index {idx} is out of range for {self.n_classes} classes.")
        return idx

    def layers(self, max_depth: int | None = 3) -> list[str]:
        """Dotted names of the layers with spatial output, usable as Grad-CAM target layers."""
        return spatial_layers(self.model, self.in_channels, self.input_size, max_depth)

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

    Normalisation defaults to ImageNet's mean/std for pretrained 3-channel models and to
    mean 0.5, std 0.25 otherwise (images are first scaled to [0, 1]).
    """
    from .validate import check_int

    if isinstance(classes, (str, bytes)) or not (isinstance(classes, Sequence) or type(classes).__name__ == "ndarray"):
        raise ParameterError(f"classes must be a list of class names, not {_brief(classes, 60)}.")
    classes = [str(c) for c in classes]
    in_channels = check_int(in_channels, "in_channels", 1)
    input_size = check_int(input_size, "input_size", 1)
    if mean is None or std is None:
        if pretrained and in_channels == 3:
            mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        elif pretrained:
            mean, std = [0.449], [0.226]
        else:
            mean, std = [0.5] * in_channels, [0.25] * in_channels
    config = ModelConfig(architecture, classes, in_channels, input_size, list(mean), list(std), target_layer or "")
    config.validate()
    model = build_network(config.architecture, len(classes), config.in_channels, pretrained)
    get_module(model, config.target_layer)  # validates the name
    model.eval()
    return ModelBundle(model, config).to(device)


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


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
    is found from the module itself (:mod:`napari_gradcam.engine.discover`).  The architecture is
    recorded as ``"custom"``: a saved bundle needs the same Python class to be loaded again.
    """
    import torch
    from torch import nn

    from .engine.discover import default_target_layer

    if not isinstance(module, nn.Module):
        raise GradCamError(f"wrap_model needs a torch.nn.Module, not {type(module).__name__}.")
    if mean is None or std is None:
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else ([0.449], [0.226])
    config = ModelConfig(architecture, [str(c) for c in classes], in_channels, input_size,
                         list(mean), list(std), target_layer or "")
    config.validate()
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
        get_module(module, config.target_layer)
    else:
        try:
            config.target_layer = default_target_layer(module, config.in_channels, config.input_size)
        except GradCamError:
            config.target_layer = ""  # pixel attributions still work; layer methods ask for a layer
    return ModelBundle(module, config)


# ----------------------------------------------------------------------------- save
def save_model(bundle: ModelBundle, path: str | os.PathLike) -> Path:
    """Write ``bundle`` to a ``.safetensors`` file, atomically (temp file + rename).

    A crash mid-write leaves any previous file at ``path`` intact.
    """
    from safetensors.torch import save_file

    from .outputs import atomic_write

    path = Path(path)
    if path.suffix != ".safetensors":
        raise GradCamError(f"Model bundles are saved as .safetensors, not {path.suffix or 'a name without extension'}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in bundle.model.state_dict().items()}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": json.dumps(asdict(bundle.config))}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


# ----------------------------------------------------------------------------- load
def _check_path(path: Path) -> None:
    """Exists, is a regular non-empty file and can be opened (no read from pipes or devices)."""
    try:
        path.stat()
    except FileNotFoundError:
        pass  # said below
    except (OSError, ValueError) as e:  # a name too long, a null byte, a loop of links...
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ModelFileError(f"The model path {_shown(str(path))[:200]} cannot be used ({reason}).") from None
    if not path.exists():
        raise ModelFileError(f"No model file at {_shown(path)}.")
    if path.is_dir():
        raise ModelFileError(f"{_shown(path)} is a folder, not a model file.")
    if not path.is_file():
        raise ModelFileError(f"{_shown(path)} is not a regular file (a device, pipe or socket), not a model file.")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{_shown(path)} is empty (0 bytes), not a model file.")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ModelFileError(f"{_shown(path.name)} cannot be read ({e.strerror or type(e).__name__}).") from None


def _is_safetensors(path: Path) -> bool:
    """True if the file starts like a safetensors file (8-byte header length, then '{')."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= path.stat().st_size - 8


def _read_safetensors(path: Path) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{path.name} is not a readable .safetensors file (truncated or corrupted: {e}).") from None
    return tensors, metadata


_TENSOR_GLOBALS = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                   "_codecs.encode", "torch.Size"}


def _pickle_globals(path: Path, limit: int = 64 << 20) -> list[str]:
    """Dotted names of the globals a pickle (or a torch.save archive's data.pkl) would import.

    Read with ``pickletools.genops``, which only parses opcodes: nothing is imported or run.
    Best effort (for the error message); an unreadable stream gives what was found so far.
    """
    import io
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                pkl = next((i for i in z.infolist() if i.filename.endswith("data.pkl")), None)
                data = z.read(pkl.filename) if pkl is not None and pkl.file_size <= limit else b""
        else:
            with open(path, "rb") as f:
                data = f.read(limit)
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError):
        return []
    found: list[str] = []
    buf = io.BytesIO(data)
    for _ in range(8):  # PyTorch's legacy format is several pickles in a row
        strings: list[str] = []
        try:
            for op, arg, _pos in pickletools.genops(buf):
                if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                    found.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # noqa: BLE001 - junk after the pickles (tensor bytes) or a damaged stream
            break
        if buf.tell() >= len(data):
            break
    return found


def _suspect_global(names: list[str]) -> str | None:
    """The global most likely to be code: one outside torch/collections, else any non-tensor one."""
    odd = [n for n in names if n not in _TENSOR_GLOBALS and not n.endswith("Storage")
           and n.split(".", 1)[-1] not in _PLAIN_TYPES]
    outside = [n for n in odd if n.split(".")[0] not in ("torch", "collections", "_codecs")]
    return (outside or odd or [None])[0]


_PLAIN_TYPES = {"set", "frozenset", "dict", "list", "tuple", "int", "float", "str", "bytes", "bytearray", "bool",
                "complex", "slice"}


def _read_state_dict(path: Path) -> dict[str, "torch.Tensor"]:
    """A plain state dict through ``torch.load(weights_only=True)``; code-carrying pickles are refused."""
    import pickle
    import warnings

    import torch

    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise ModelFileError(f"{_shown(path.name)} is a damaged archive ({e}).") from None
        names = [i.filename for i in infos]
        expanded = sum(i.file_size for i in infos)
        if expanded > 4 * path.stat().st_size + (16 << 20):  # torch.save stores entries uncompressed
            raise ModelFileError(
                f"{_shown(path.name)} is a compressed archive that would expand to {expanded / 2**30:.1f} GiB "
                "in memory; torch.save never writes such files, so it was not loaded."
            )
        if any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in names):
            raise ModelFileError(
                f"{path.name} is a TorchScript program, not a state dict; napari-gradcam loads weights only "
                "(save model.state_dict() or use a .safetensors bundle)."
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4" from the weights-only unpickler
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        suspect = _suspect_global(_pickle_globals(path))
        if suspect or "GLOBAL" in str(e) or "global" in str(e):
            named = f"it refers to {suspect}: " if suspect else ""
            raise ModelFileError(
                f"{path.name} holds Python objects beyond tensors ({named}a pickled model or custom code); it was not "
                "loaded because unpickling it could run code: save model.state_dict() or a .safetensors bundle."
            ) from None
        raise ModelFileError(
            f"{path.name} is not a readable PyTorch weights file (not a state dict saved with torch.save)."
        ) from None
    except Exception as e:  # noqa: BLE001 - torch.load raises many types on junk (IndexError, struct.error, ...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelFileError(f"{path.name} is not a readable PyTorch weights file ({first}).") from None
    # common wrappers: {"state_dict": ...}, {"model": ...}, DataParallel's "module." prefix
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{path.name} does not contain a state dict (a mapping of names to tensors).")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _config_from_metadata(path: Path, metadata: dict[str, str]) -> ModelConfig | None:
    if metadata.get("format") != FORMAT:
        return None
    try:
        version = int(metadata.get("format_version", "0"))
        if version < 1:
            raise ValueError(f"format version {version}")
        raw = json.loads(metadata["config"])
        if version > FORMAT_VERSION:
            raise ModelFileError(
                f"{path.name} was written by a newer napari-gradcam (format {version}); upgrade to load it."
            )
        config = ModelConfig(**raw)
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        if isinstance(e, ModelFileError):
            raise
        if isinstance(e, RecursionError):
            detail = "nested too deeply"
        else:
            detail = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ModelFileError(f"{_shown(path.name)} has damaged napari-gradcam metadata ({detail}).") from None
    try:
        config.validate()
    except GradCamError as e:
        raise ModelFileError(f"{path.name} has invalid metadata: {e}") from None
    return config


def _brief(value, limit: int = 120) -> str:
    """repr(value), cut to ``limit`` characters (a list of 100,000 class names stays readable)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return text[: limit - 5] + " ...]" if isinstance(value, list) else text[:limit] + "..."


def _shape(shape) -> str:
    return " x ".join(str(int(n)) for n in shape) or "a scalar"


def _check_fit(path: Path, config: ModelConfig, tensors: dict) -> None:
    """Compare the file's tensors with the network ``config`` describes, built on the meta device
    (no memory), and say in one sentence what does not fit: class count, input channels, or the
    architecture itself (missing, unexpected or differently shaped weights)."""
    import torch

    arch = get_architecture(config.architecture)
    with torch.device("meta"):
        expected = build_network(config.architecture, len(config.classes), config.in_channels).state_dict()
    name, n = path.name, len(config.classes)
    head, first = tensors.get(arch.head + ".weight"), tensors.get(arch.first_conv + ".weight")
    if set(tensors) == set(expected):
        if head is not None and head.ndim == 2 and head.shape[0] != n:
            raise ModelFileError(
                f"The weights in {name} classify into {head.shape[0]} classes, but the model is described with "
                f"{n} classes ({_brief(config.classes, 80)})."
            )
        if first is not None and first.ndim == 4 and first.shape[1] != config.in_channels:
            raise ModelFileError(
                f"The weights in {name} take {first.shape[1]} input channel(s), but the model is described with "
                f"{config.in_channels}."
            )
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    reshaped = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    retyped = [k for k in expected if k in tensors and expected[k].is_floating_point()
               and not tensors[k].is_floating_point()]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of its weights are missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} are not part of it (e.g. {_brief(unexpected[0], 80)})")
    if reshaped:
        k = reshaped[0]
        problems.append(f"{len(reshaped)} have other shapes (e.g. {k} is {_shape(tensors[k].shape)} in the file, "
                        f"{_shape(expected[k].shape)} in the model)")
    if retyped:
        problems.append(f"{len(retyped)} are not floating point (e.g. {retyped[0]} is {tensors[retyped[0]].dtype})")
    if problems:
        other = _guess_architecture(tensors) if missing or unexpected else None
        hint = f"; they look like {other} weights" if other and other != config.architecture else ""
        raise ModelFileError(
            f"The weights in {name} do not fit a {config.architecture} with {n} classes and "
            f"{config.in_channels} input channel(s): {'; '.join(problems)}{hint}."
        )


def _guess_architecture(tensors: dict) -> str | None:
    """The registered architecture whose weight names are exactly the file's (built on the meta device)."""
    import torch

    from .models import list_architectures

    keys = set(tensors)
    for arch in list_architectures():
        try:
            with torch.device("meta"):
                if set(build_network(arch, 2, 1).state_dict()) == keys:
                    return arch
        except Exception:  # noqa: BLE001 - a hint only
            continue
    return None


def _fit_error(path: Path, config: ModelConfig, err: RuntimeError) -> ModelFileError:
    """Turn load_state_dict's long error into one sentence."""
    text = str(err)
    detail = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("size mismatch") or line.startswith(("Missing key", "Unexpected key")):
            detail = line.rstrip(".")[:200]
            break
    return ModelFileError(
        f"The weights in {path.name} do not fit a {config.architecture} with {len(config.classes)} classes and "
        f"{config.in_channels} input channel(s){': ' + detail if detail else ''}."
    )


def load_model(
    path: str | os.PathLike,
    architecture: str | None = None,
    classes: Sequence[str] | None = None,
    in_channels: int | None = None,
    input_size: int | None = None,
    device: str | None = "auto",
) -> ModelBundle:
    """Load a model bundle (``.safetensors``) or a plain state dict, without running code.

    For a napari-gradcam ``.safetensors`` file everything comes from its metadata (arguments
    given here must agree with it).  For a state dict (``.pt``/``.pth``/``.bin``) or a foreign
    ``.safetensors`` file, ``architecture`` and ``classes`` are required; ``in_channels`` is
    inferred from the first convolution when not given and ``input_size`` defaults to 224.

    Raises
    ------
    ModelFileError
        Missing, empty, truncated, foreign, code-carrying or mismatching files; one sentence.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ParameterError(f"load_model needs the path of a model file, not {_brief(path, 60)}.")
    try:
        return _load_model(Path(path), architecture, classes, in_channels, input_size, device)
    except ModelFileError as e:
        msg = str(e)
        if msg.isprintable():
            raise
        raise ModelFileError(_shown(msg)) from None  # e.g. a file name with a newline: still one line


def _load_model(path: Path, architecture, classes, in_channels, input_size, device) -> ModelBundle:
    from .numerics import check_weights

    resolve_device(device)  # a device that cannot run is refused before the file is read
    _check_path(path)
    config: ModelConfig | None = None
    if _is_safetensors(path):
        tensors, metadata = _read_safetensors(path)
        config = _config_from_metadata(path, metadata)
    elif path.suffix == ".safetensors":
        raise ModelFileError(f"{path.name} is not a readable .safetensors file (truncated or corrupted header).")
    else:
        tensors = _read_state_dict(path)

    if config is None:  # plain weights: the caller says what they are
        if not architecture or not classes:
            raise ModelFileError(
                f"{path.name} holds bare weights with no description; give the architecture and the class names."
            )
        arch = get_architecture(architecture)
        if in_channels is None:
            first = tensors.get(arch.first_conv + ".weight")
            in_channels = int(first.shape[1]) if first is not None and first.ndim == 4 else 1
        config = ModelConfig(arch.name, [str(c) for c in classes], int(in_channels), int(input_size or 224),
                             [0.5] * int(in_channels), [0.25] * int(in_channels))
        try:
            config.validate()
        except GradCamError as e:
            raise ModelFileError(str(e)) from None
    else:
        for name, given, stored in (("architecture", architecture, config.architecture),
                                    ("in_channels", in_channels, config.in_channels),
                                    ("input_size", input_size, config.input_size)):
            if given is not None and str(given).lower() != str(stored).lower():
                raise ModelFileError(f"{path.name} is a {name}={stored} model, not {given}.")
        if classes is not None and list(classes) != config.classes:
            raise ModelFileError(f"{path.name} has classes {_brief(config.classes)}, not {_brief(list(classes))}.")

    _check_fit(path, config, tensors)  # before allocating the network: metadata may ask for anything
    model = build_network(config.architecture, len(config.classes), config.in_channels)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise _fit_error(path, config, e) from None
    try:
        get_module(model, config.target_layer)
    except GradCamError:
        raise ModelFileError(f"{path.name} names a target layer {config.target_layer!r} the model does not have.") from None
    model.eval()
    check_weights(model, path.name, error=ModelFileError)  # NaN weights, negative BatchNorm variance
    return ModelBundle(model, config).to(device)

"""Saving and loading model files, without running code from them.

Bundle format (``.safetensors``): the model's ``state_dict`` tensors, and in the safetensors header's
string metadata::

    {"format": "napari-gradcam", "format_version": "1", "2" or "3", "config": "<JSON of ModelConfig>"}

Version 1 (still written when it suffices, so older releases read those files) knows the registered
architectures; version 2 adds ``torchvision:NAME``, ``timm:NAME``, ``onnx`` and ``custom`` and the
config's ``origin``; version 3 (written only then) adds stored projections (:mod:`.projection`, the
``projections`` entry and ``__projection__.*`` tensors).  An ``onnx`` bundle also holds the ONNX model
as a uint8 tensor ``__onnx_graph__`` (and the weights only when they changed since the conversion).  Loading parses JSON, raw tensors and
protobuf only.  Plain state dicts (``.pt``/``.pth``/``.bin``) load through
``torch.load(weights_only=True)``; ``.onnx`` files convert with onnx2torch.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from .. import models
from ..errors import GradCamError, ModelFileError, shown
from . import diagnose
from .core import ModelBundle, ModelConfig
from .diagnose import shown

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

FORMAT = "napari-gradcam"
FORMAT_VERSION = 3
#: Files with stored projections (P-ClArC) are version 3, so that a release that cannot apply them refuses them.
PROJECTION_VERSION = 3
ONNX_KEY = "__onnx_graph__"
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


# ----------------------------------------------------------------------------- save
def save_model(bundle: ModelBundle, path: str | os.PathLike) -> Path:
    """Write ``bundle`` to a ``.safetensors`` file, atomically (temp file + rename).

    A crash mid-write leaves any previous file at ``path`` intact.
    """
    from safetensors.torch import save_file

    from ..outputs import atomic_write

    path = Path(path)
    if path.suffix != ".safetensors":
        raise GradCamError(f"Model bundles are saved as .safetensors, not {path.suffix or 'a name without extension'}.")
    _make_folder(path)
    tensors = _plain_tensors(bundle.model)
    config = asdict(bundle.config)
    if bundle.architecture == "onnx":
        tensors = _with_onnx_graph(bundle, tensors)
    version = 2  # (3 only with projections, below)
    if bundle.architecture in models.ARCHITECTURES and not config["origin"]:
        version = 1  # readable by releases that know only the registered architectures
        del config["origin"]
    metadata = {"format": FORMAT, "format_version": str(version), "config": json.dumps(config)}
    if getattr(bundle, "projections", None):  # P-ClArC: tensors + JSON; older releases refuse the file
        from .projection import to_file

        extra, meta = to_file(bundle.projections)
        tensors, metadata = {**tensors, **extra}, {**metadata, **meta, "format_version": str(PROJECTION_VERSION)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def _make_folder(path: Path) -> None:
    """Create the folder ``path`` goes into; OutputError (one sentence) when a file stands in its way."""
    from ..errors import OutputError
    from ..outputs import nearest_existing

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = nearest_existing(path.parent)
        raise OutputError(f"Cannot write {shown(path)}: {shown(blocker)} is a file, not a folder.") from None


def _plain_tensors(model: "nn.Module") -> dict[str, "torch.Tensor"]:
    """The state dict on the CPU, contiguous, tensors that share memory copied (safetensors refuses them)."""
    out, seen = {}, set()
    for key, value in model.state_dict().items():
        t = value.detach().to("cpu").contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        out[key] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


def _with_onnx_graph(bundle: ModelBundle, tensors: dict) -> dict:
    import torch

    from .onnx_import import fingerprint

    if bundle.onnx_graph is None:
        raise GradCamError("This onnx bundle no longer has its ONNX graph; load it again from the .onnx file.")
    if fingerprint(bundle.model) == bundle.config.origin.get("weights_sha256"):
        tensors = {}  # unchanged since the conversion: the graph carries the weights
    tensors[ONNX_KEY] = torch.frombuffer(bytearray(bundle.onnx_graph), dtype=torch.uint8)
    return tensors


# ----------------------------------------------------------------------------- read
def is_safetensors(path: Path) -> bool:
    """True if the file starts like a safetensors file (8-byte header length, then '{')."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= path.stat().st_size - 8


def read_safetensors(path: Path) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{path.name} is not a readable .safetensors file (truncated or corrupted: {e}).") from None
    return tensors, metadata


def read_state_dict(path: Path) -> dict[str, "torch.Tensor"]:
    """A plain state dict through ``torch.load(weights_only=True)``; code-carrying pickles are refused."""
    import pickle
    import warnings

    import torch

    if zipfile.is_zipfile(path):
        diagnose.check_archive(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4" from the weights-only unpickler
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise diagnose.refused_pickle(path, e) from None
    except Exception as e:  # noqa: BLE001 - torch.load raises many types on junk (IndexError, struct.error, ...)
        raise ModelFileError(f"{path.name} is not a readable PyTorch weights file ({_torch_reason(e)}).") \
            from None
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


def _torch_reason(e: BaseException) -> str:
    """The first line of a torch error, cut before any printf placeholder torch left unfilled
    ("storage has wrong byte size: expected %ld got %ld360400" -> "storage has wrong byte size; the file
    is damaged")."""
    import re

    text = diagnose.first_line(e)
    m = re.search(r"%[-+ #0-9.]*[hlLqjzt]*[diouxXeEfgGcs]", text)
    if m is None:
        return text
    head = text[: m.start()]
    head = (head.rsplit(":", 1)[0] if ":" in head else head).strip(" ,(") or type(e).__name__
    return f"{head}; the file is damaged"


def config_from_metadata(path: Path, metadata: dict[str, str]) -> ModelConfig | None:
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
        detail = "nested too deeply" if isinstance(e, RecursionError) else diagnose.first_line(e)
        raise ModelFileError(f"{shown(path.name)} has damaged napari-gradcam metadata ({detail}).") from None
    try:
        config.validate()
    except GradCamError as e:
        raise ModelFileError(f"{path.name} has invalid metadata: {e}") from None
    return config

"""Model bundles: a network plus its classes, input geometry and normalisation; safe files.

* :mod:`.core`: :class:`ModelBundle`, :class:`ModelConfig`, :func:`build_model`, :func:`wrap_model`;
* :mod:`.files`: the ``.safetensors`` format, :func:`save_model`, reading state dicts;
* :mod:`.loading`: :func:`load_model` for bundles, bare weights, ONNX models and caller-built modules;
* :mod:`.onnx_import`: ONNX graphs as torch modules (onnx2torch);
* :mod:`.diagnose`: why a file cannot be loaded, in one sentence.

Loading parses JSON, raw tensors and protobuf only: no code from a file runs.
"""

from __future__ import annotations

from .core import IMAGENET_MEAN, IMAGENET_STD, ModelBundle, ModelConfig, build_model, resolve_device, wrap_model
from .files import FORMAT, FORMAT_VERSION, save_model
from .loading import load_model

__all__ = ["ModelBundle", "ModelConfig", "build_model", "wrap_model", "save_model", "load_model", "resolve_device",
           "FORMAT", "FORMAT_VERSION", "IMAGENET_MEAN", "IMAGENET_STD"]

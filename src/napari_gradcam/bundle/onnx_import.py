"""ONNX models as torch modules (``onnx2torch``), so that every gradient method works on them.

An ONNX file is a protobuf: parsing and converting it runs no code from the file.  Before the
conversion the graph is tidied so that exporters' habits do not stop it: initializers shared through
``Identity`` nodes (torch's exporter) are used directly, and a final ``Softmax`` (Keras) is removed so
that the module returns logits.  The input must be (N, C, H, W) with C = 1 or 3.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ModelFileError
from .diagnose import first_line

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

MAX_ONNX_BYTES = 4 << 30


@dataclass
class OnnxInfo:
    """What the graph says about its input and output."""

    input_name: str
    in_channels: int | None
    input_size: int | None  # None when H and W are not fixed
    n_outputs: int | None  # classes, when the output's last dimension is fixed
    softmax_removed: bool


def _dims(value) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value.type.tensor_type.shape.dim]


def parse(data: bytes, name: str):
    """The ``onnx.ModelProto`` in ``data``; one sentence when it is not an ONNX model."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError, onnx.onnx_cpp2py_export.checker.ValidationError) as e:
        raise ModelFileError(f"{name} is not a readable ONNX model ({first_line(e, 120)}).") from None
    if not model.graph.node:
        raise ModelFileError(f"{name} is not a readable ONNX model (it has no graph).")
    return model


def _graph_input(model, name: str):
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ModelFileError(f"{name} has {len(inputs)} inputs and {len(model.graph.output)} outputs; an image "
                             "classifier has one image input and one output of class scores.")
    return inputs[0]


def describe(model, name: str) -> OnnxInfo:
    """Input channels and size (NCHW) and class count from the graph's declared shapes."""
    value = _graph_input(model, name)
    dims = _dims(value)
    if len(dims) != 4:
        raise ModelFileError(f"{name} takes a {len(dims)}-dimensional input; an image classifier takes "
                             "(N, C, H, W).")
    _, c, h, w = dims
    if isinstance(c, int) and c not in (1, 3):
        if w in (1, 3):
            raise ModelFileError(f"{name} takes channels-last (N, H, W, C) images; export it with channels "
                                 f"first (tf2onnx: --inputs-as-nchw {value.name}).")
        raise ModelFileError(f"{name} takes {c}-channel images; napari-gradcam explains 1- or 3-channel ones.")
    if isinstance(h, int) and isinstance(w, int) and h and w and h != w:
        raise ModelFileError(f"{name} takes {h} x {w} images; napari-gradcam needs a square input size.")
    out = _dims(model.graph.output[0])
    n_out = out[-1] if out and isinstance(out[-1], int) and out[-1] > 0 else None
    return OnnxInfo(value.name, c if isinstance(c, int) and c else None, h if isinstance(h, int) and h else None,
                    n_out, False)


def _tidy(model) -> bool:
    """Use initializers shared through Identity nodes directly; drop a final Softmax.  In place.

    Returns whether a Softmax was removed.
    """
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs}
    nodes = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in nodes:
        for k, value in enumerate(node.input):
            if value in alias:
                node.input[k] = alias[value]
    removed = False
    out = graph.output[0]
    last = [n for n in nodes if out.name in n.output]
    if last and last[0].op_type == "Softmax":
        softmax = last[0]
        producer = [n for n in nodes if softmax.input[0] in n.output]
        if producer:
            producer[0].output[list(producer[0].output).index(softmax.input[0])] = out.name
            nodes.remove(softmax)
            removed = True
    del graph.node[:]
    graph.node.extend(nodes)
    _plain_reshapes(graph)
    return removed


def _plain_reshapes(graph) -> None:
    """Drop ``allowzero=1`` from Reshape nodes whose target shape is a constant without a 0 (torch's new
    exporter writes it on every Reshape; it changes nothing there, and onnx2torch refuses it).  In place."""
    from onnx import numpy_helper

    shapes = {i.name: i for i in graph.initializer}
    shapes.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in shapes:
            continue
        keep = [a for a in node.attribute if not (a.name == "allowzero" and a.i == 1)]
        if len(keep) < len(node.attribute) and 0 not in numpy_helper.to_array(shapes[node.input[1]]).tolist():
            del node.attribute[:]
            node.attribute.extend(keep)


def convert(data: bytes, name: str) -> tuple["nn.Module", OnnxInfo]:
    """The torch module (a ``torch.fx.GraphModule``, eval mode) that computes what the ONNX model does.

    Operator versions newer than onnx2torch knows are first converted down (ONNX's version converter,
    to opset 17, else 13).
    """
    import warnings

    # onnx2torch's Slice indexes with a list, which torch warns about on every forward pass
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                            category=UserWarning, module=r"onnx2torch\.")
    model = parse(data, name)
    info = describe(model, name)
    info.softmax_removed = _tidy(model)
    try:
        module = _convert(model)
    except NotImplementedError as e:
        module = _convert_older(model, name, e)
    except Exception as e:  # noqa: BLE001 - the converter raises many types on graphs it cannot read
        raise _unconvertible(name, e) from None
    return module.eval(), info


def _convert(model) -> "nn.Module":
    import warnings

    from onnx2torch import convert as onnx2torch_convert

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnx2torch_convert(model)


def _convert_older(model, name: str, first_error: Exception) -> "nn.Module":
    from onnx import version_converter

    for opset in (17, 13):
        try:
            return _convert(version_converter.convert_version(model, opset))
        except Exception:  # noqa: BLE001 - try the next opset, then report the first error
            continue
    raise _unconvertible(name, first_error) from None


def _unconvertible(name: str, e: Exception) -> ModelFileError:
    if isinstance(e, NotImplementedError):
        return ModelFileError(f"{name} uses an ONNX operation onnx2torch cannot convert ({first_line(e, 160)}).")
    return ModelFileError(f"{name} could not be converted to PyTorch ({type(e).__name__}: {first_line(e, 160)}).")


def fingerprint(module: "nn.Module") -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes), to tell whether it changed."""
    import torch

    h = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()

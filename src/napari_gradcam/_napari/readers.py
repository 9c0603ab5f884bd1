"""npe2 readers: DICOM images (files and folders) as layers, and model files dropped on the viewer.

* :func:`get_dicom_reader` reads ``.dcm``/``.dicom`` files, and folders of DICOM files (any names:
  the DICM preamble is checked), through :func:`napari_gradcam.dicom.read_dicom`: grey levels as a
  radiology viewer shows them (float32 in [0, 1]), pixel spacing as the layer's scale, the VOI used
  and de-identified tags in the layer's metadata.  A folder of same-shaped grayscale images becomes
  one stack; otherwise one layer per file.
* :func:`get_model_reader` takes ``.safetensors``, ``.onnx``, ``.pt`` and ``.pth`` files whose first
  bytes look like a model file (anything else is declined, so other readers can try it), loads
  the model with :func:`napari_gradcam.load_model` (no code runs) into the viewer's Model widget
  (docked if needed) and adds no layer.  When loading needs what the file does not say, the
  sentence is shown and the Model widget opens with the file filled in.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Callable

from ..errors import GradCamError, ImageError

MODEL_SUFFIXES = (".safetensors", ".onnx", ".pt", ".pth")
#: What napari takes as "read, and no layer to add".
NO_LAYERS = [(None,)]
#: ``torch.save``'s legacy (non-zip) files start with the pickled magic number 0x1950a86a20f9469cfc6c.
_TORCH_LEGACY_HEAD = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


# ----------------------------------------------------------------------------- DICOM
def _dicom_files(path: "str | list[str]") -> list[Path]:
    """The DICOM files among ``path`` (a file, a folder, or a list of them); folders are not recursed."""
    from ..dicom import DICOM_SUFFIXES, is_dicom_file

    found: list[Path] = []
    for p in map(Path, [path] if isinstance(path, (str, os.PathLike)) else path):
        if p.is_dir():
            try:
                entries = sorted(e for e in p.iterdir() if not e.name.startswith(".") and e.is_file())
            except OSError:
                continue
            found += [e for e in entries if is_dicom_file(e)]
        elif p.suffix.lower() in DICOM_SUFFIXES or (p.is_file() and is_dicom_file(p)):
            found.append(p)
    return found


def get_dicom_reader(path: "str | list[str]") -> Callable | None:
    """npe2 reader hook: a function reading the DICOM files of ``path``, or None if there are none."""
    files = _dicom_files(path)
    if not files:
        return None
    name = Path(path).name if isinstance(path, (str, os.PathLike)) else Path(path[0]).parent.name
    return lambda _path: read_dicom_layers(files, name)


def read_dicom_layers(files: list[Path], name: str | None = None) -> list[tuple]:
    """Layer data for DICOM ``files``: one stack when they are same-shaped grayscale 2D images, else one layer each.

    Files that cannot be read are left out with a warning; ImageError if none can be read.
    """
    from ..dicom import read_dicom

    images, failed = [], []
    for f in files:
        try:
            images.append((f, read_dicom(f)))
        except ImageError as e:
            failed.append((f, str(e)))
    if not images:
        raise ImageError(failed[0][1] if len(failed) == 1 else
                         f"None of the {len(failed)} DICOM files could be read ({failed[0][1]})")
    if failed:
        from napari.utils.notifications import show_warning

        show_warning(f"{len(failed)} of {len(files)} DICOM files could not be read and were left out "
                     f"(e.g. {failed[0][1]})")
    if len(images) > 1 and _stackable([im for _, im in images]):
        return [_stack_layer(images, name or files[0].parent.name)]
    return [_layer(f, im) for f, im in images]


def _stackable(images) -> bool:
    first = images[0].data
    return all(im.frames == 1 and not im.metadata.get("colour") and im.data.shape == first.shape for im in images)


def _image_kwargs(image, name: str, leading_axes: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"name": name}
    if image.metadata.get("colour"):
        kwargs["rgb"] = True
    else:
        kwargs.update(colormap="gray", contrast_limits=[0.0, 1.0])
    if image.spacing is not None:
        kwargs["scale"] = [1.0] * leading_axes + list(image.spacing)
        kwargs["units"] = ("pixel",) * leading_axes + ("mm", "mm")
    return kwargs


def _layer(path: Path, image) -> tuple:
    leading = 1 if image.frames > 1 else 0
    kwargs = _image_kwargs(image, path.stem if path.suffix.lower() in (".dcm", ".dicom") else path.name, leading)
    kwargs["metadata"] = {**image.metadata, "file": path.name}
    return image.data, kwargs, "image"


def _stack_layer(images: list, name: str) -> tuple:
    import numpy as np

    data = np.stack([im.data for _, im in images])
    kwargs = _image_kwargs(images[0][1], name, 1)
    kwargs["metadata"] = {"files": [f.name for f, _ in images], "per_file": [im.metadata for _, im in images],
                          "voi": images[0][1].metadata.get("voi"), "spacing_mm": images[0][1].metadata.get("spacing_mm")}
    return data, kwargs, "image"


# ----------------------------------------------------------------------------- model files
def looks_like_model_file(path: "str | os.PathLike") -> bool:
    """Whether the file's first bytes fit its model suffix (safetensors header, ONNX protobuf, torch.save)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    if suffix == ".safetensors":
        n = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
        return head[8:9] == b"{" and 2 <= n <= size - 8
    if suffix == ".onnx":
        return _onnx_head(head)
    if suffix in (".pt", ".pth"):
        return head.startswith(_TORCH_LEGACY_HEAD) or (head.startswith(b"PK\x03\x04") and _torch_zip(path))
    return False


def _onnx_head(head: bytes) -> bool:
    """An ONNX ModelProto starts with ir_version (field 1, a varint) and then another field's tag."""
    if not head or head[0] != 0x08:
        return False
    i = 1
    while i < len(head) and head[i] & 0x80 and i < 10:  # the varint's continuation bytes
        i += 1
    if i + 1 >= len(head):
        return False
    tag = head[i + 1]
    return 2 <= tag >> 3 <= 20 and tag & 7 in (0, 2)


def _torch_zip(path: Path) -> bool:
    """A ``torch.save`` zip archive: ``<name>/data.pkl`` inside."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def get_model_reader(path: "str | list[str]") -> Callable | None:
    """npe2 reader hook: load a dropped model file into the Model widget; None (declined) if it is not one."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    p = Path(path)
    if p.suffix.lower() not in MODEL_SUFFIXES or not looks_like_model_file(p):
        return None
    return open_model_file


def open_model_file(path: "str | os.PathLike") -> list[tuple]:
    """Load ``path`` into the current viewer's Model widget; returns napari's "no layers" value.

    A file that cannot be loaded as it is (e.g. bare weights without class names) is shown as one
    sentence, and the Model widget opens with the file filled in for the missing details.
    """
    import napari
    from napari.utils.notifications import show_error

    from ._compat import avoid_triton_llvm_clash
    from .model_api import show_model_widget, use_model

    viewer = napari.current_viewer()
    if viewer is None:
        raise GradCamError(f"{Path(path).name} is a model file: open it in a napari viewer to load it.")
    avoid_triton_llvm_clash()  # loading imports torch(vision) after the canvas exists
    try:
        use_model(viewer, Path(path), source=str(path))
    except GradCamError as e:
        show_error(str(e))
        widget = show_model_widget(viewer)
        if widget is not None:
            widget.set_file(path)
    return NO_LAYERS

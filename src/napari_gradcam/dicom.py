"""DICOM images read the way a radiology viewer shows them (pydicom; no napari here).

:func:`read_dicom` turns the stored pixels into the displayed image, following DICOM PS3.3 C.11:

1. **Modality LUT**: the Modality LUT Sequence, or Rescale Slope / Intercept
   (``pydicom.pixels.apply_modality_lut``).
2. **VOI**: the *first* VOI LUT of the VOI LUT Sequence, or else the *first* Window Center / Width
   pair (LINEAR, LINEAR_EXACT or SIGMOID, ``pydicom.pixels.apply_voi_lut``); without either,
   the image's own range.  Which one was used is in ``metadata["voi"]``.
3. Scaled to [0, 1] over the VOI's output range, then **MONOCHROME1 inverted** (``1 - x``) so that
   dense tissue is bright, as on a film.
4. Colour images (RGB, YBR, PALETTE COLOR) come back as RGB in their stored dtype; no LUT applies.

The metadata keeps what describes the image (modality, view position, photometric
interpretation, the window used, pixel spacing, bit depths...) from the whitelist
:data:`KEPT_TAGS`, and nothing that identifies a person, a study or an institution (names, ids,
dates, UIDs, accession numbers, institution and station names are never copied).

The size an image declares (Rows x Columns x frames x samples x bits) is checked against the memory
available (``resources.DECODE_MEMORY_SHARE`` of :func:`~napari_gradcam.resources.available_memory`) before a
pixel is decoded, and a deflated data set is inflated with the same cap, so a small file declaring
40,000 x 40,000 pixels, or a few MB that inflate to gigabytes, is refused in one sentence.

Compressed transfer syntaxes are decoded by whichever of pydicom's decoders is installed: with
pydicom alone (and Pillow) that is RLE, deflate, JPEG baseline/extended and JPEG 2000; JPEG
lossless, JPEG-LS and HTJ2K need ``python-gdcm`` or ``pylibjpeg`` plugins, and a file that needs
them says so in one sentence (:class:`~napari_gradcam.errors.ImageError`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ImageError

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

#: File name suffixes read as DICOM without looking inside.
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
#: Part 10 files: a 128-byte preamble, then these four bytes.
DICM_MAGIC = b"DICM"
#: Tags copied into the metadata: they describe the image, not the person, study or institution.
KEPT_TAGS = (
    "Modality", "SOPClassUID", "ImageType", "ViewPosition", "ImageLaterality", "Laterality",
    "BodyPartExamined", "PatientOrientation", "PhotometricInterpretation", "PresentationLUTShape",
    "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth",
    "WindowCenterWidthExplanation", "VOILUTFunction", "PixelSpacing", "ImagerPixelSpacing",
    "PixelAspectRatio", "EstimatedRadiographicMagnificationFactor", "PixelIntensityRelationship",
    "PixelIntensityRelationshipSign", "LossyImageCompression", "Manufacturer", "ManufacturerModelName",
)
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "PALETTE COLOR")
#: pip names of the packages pydicom's decoder plugins name (the rest are their own pip names).
_PIP_NAMES = {"gdcm": "python-gdcm"}


@dataclass
class DicomImage:
    """A DICOM image ready to show or classify.

    Attributes
    ----------
    data : np.ndarray
        Grayscale: (H, W), or (F, H, W) for F frames, float32 in [0, 1] after the modality LUT,
        the VOI and MONOCHROME1 inversion (bright = dense).  Colour: (H, W, 3) or (F, H, W, 3) RGB
        in the stored dtype.
    spacing : tuple of float or None
        (row, column) pixel spacing in mm, from Pixel Spacing or else Imager Pixel Spacing.
    metadata : dict
        De-identified, JSON-friendly description: ``voi`` (what mapped the values), ``window``
        (centre/width/function or LUT details), ``inverted``, ``spacing_mm`` and
        ``spacing_source``, ``transfer_syntax`` and ``dicom`` (the :data:`KEPT_TAGS` present).
    """

    data: np.ndarray
    spacing: tuple[float, float] | None
    metadata: dict[str, Any] = field(default_factory=dict)
    frames: int = 1


# ----------------------------------------------------------------------------- recognising files
def has_dicm_preamble(path: str | os.PathLike) -> bool:
    """True if the file is a DICOM Part 10 file ("DICM" after its 128-byte preamble); reads 132 bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == DICM_MAGIC


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for ``.dcm``/``.dicom`` names and for any file with the DICM preamble (e.g. no suffix)."""
    return Path(path).suffix.lower() in DICOM_SUFFIXES or has_dicm_preamble(path)


# ----------------------------------------------------------------------------- reading
def _open(path: Path, header_only: bool = False) -> "Dataset":
    """The dataset of a DICOM file (without its pixels when ``header_only``); ImageError if not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path.is_file():
        raise ImageError(f"No DICOM file at {path}.")
    force = path.suffix.lower() in DICOM_SUFFIXES  # raw datasets (no preamble) are common as .dcm
    try:
        source = _inflated(path) if has_dicm_preamble(path) else path
        ds = pydicom.dcmread(source, force=force, stop_before_pixels=header_only)
        if source is not path:  # inflated here: the pixels are native; the metadata names the file's syntax
            ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    except ImageError:
        raise
    except InvalidDicomError:
        raise ImageError(f"{path.name} is not a DICOM file (no DICM preamble).") from None
    except Exception as e:  # noqa: BLE001 - any parse failure is a problem of the user's file
        raise ImageError(f"{path.name} could not be read as DICOM ({type(e).__name__}: {_first_line(e)}).") from None
    _fill_transfer_syntax(ds)
    if "Rows" not in ds or "Columns" not in ds:
        if not has_dicm_preamble(path):  # forced reading of a file that may not be DICOM at all
            raise ImageError(f"{path.name} could not be read as DICOM (no DICM preamble and no image header).")
        raise ImageError(f"{path.name} holds no image (a DICOM file without rows and columns, e.g. a report).")
    check_declared_size(ds, path.name)
    return ds


def _decode_budget() -> float:
    """Bytes a DICOM file may take to decode and display: the share of the available memory that
    :mod:`napari_gradcam.data` allows any image."""
    from .resources import DECODE_MEMORY_SHARE, available_memory

    return DECODE_MEMORY_SHARE * available_memory()


def decoded_bytes(ds: "Dataset") -> int:
    """Peak bytes that decoding and displaying the declared image takes: the stored values
    (Rows x Columns x frames x samples x BitsAllocated), plus float64 after the modality LUT and the
    VOI and float32 in [0, 1] for grayscale, or one RGB copy for colour (from the header alone)."""
    values = (int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0)
              * max(1, int(ds.get("NumberOfFrames", 1) or 1)) * max(1, int(ds.get("SamplesPerPixel", 1) or 1)))
    stored = values * max(1, -(-int(ds.get("BitsAllocated", 16) or 16) // 8))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    colour = photometric in _COLOUR or int(ds.get("SamplesPerPixel", 1) or 1) > 1
    return stored + (stored if colour else values * (8 + 8 + 4))


def check_declared_size(ds: "Dataset", name: str) -> None:
    """ImageError (one sentence) when the declared image is too large to decode whole: more pixels per
    frame than ``preprocess.MAX_PIXELS``, or more memory than :func:`_decode_budget`; header only."""
    from .preprocess import MAX_PIXELS
    from .resources import format_bytes

    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    what = f"{rows} x {cols} pixels" + (f" in {frames:,} frames" if frames > 1 else "")
    if rows * cols > MAX_PIXELS:
        raise ImageError(f"{name} declares {what}, more than the {MAX_PIXELS / 1e6:.0f} million an image may have "
                         "to be read whole.")
    need, budget = decoded_bytes(ds), _decode_budget()
    if need > budget:
        raise ImageError(f"{name} declares {what} ({format_bytes(need)} to decode and display), more than this "
                         f"machine can decode now ({format_bytes(budget)}).")


def _inflated(path: Path):
    """``path`` itself, or for a Deflated Explicit VR Little Endian file an in-memory copy with the data
    set inflated (at most :func:`_decode_budget` bytes: a small file that inflates to more is refused
    in one sentence before the memory is taken) and re-labelled Explicit VR Little Endian."""
    import io
    import zlib

    from pydicom import uid
    from pydicom.filereader import read_file_meta_info
    from pydicom.filewriter import write_file_meta_info

    from .resources import format_bytes

    meta = read_file_meta_info(path)
    deflated = meta.get("TransferSyntaxUID") == uid.DeflatedExplicitVRLittleEndian
    if not deflated or "FileMetaInformationGroupLength" not in meta:
        return path
    start = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)  # preamble, DICM, the group length element
    cap = int(_decode_budget())
    inflate = zlib.decompressobj(-zlib.MAX_WBITS)
    with open(path, "rb") as f:
        f.seek(start)
        body = inflate.decompress(f.read(), cap)
    if inflate.unconsumed_tail:
        raise ImageError(f"{path.name} is deflated to {format_bytes(path.stat().st_size)} and inflates to more than "
                         f"this machine can decode now ({format_bytes(cap)}).")
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    buf = io.BytesIO()
    buf.write(b"\0" * 128 + DICM_MAGIC)
    write_file_meta_info(buf, meta, enforce_standard=True)
    buf.write(body)
    buf.seek(0)
    return buf


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "unreadable"


def _fill_transfer_syntax(ds: "Dataset") -> None:
    """Give a raw dataset (no file meta) the transfer syntax it was read with, so its pixels decode."""
    from pydicom import uid
    from pydicom.dataset import FileMetaDataset

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit is None:
        implicit, little = True, True
    syntax = (uid.ImplicitVRLittleEndian if implicit else
              uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax


def _decoder_problem(ds: "Dataset", name: str) -> str | None:
    """None if the installed pydicom plugins can decode the file's transfer syntax, else one sentence."""
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"{name} uses the transfer syntax {syntax.name}, whose pixel data pydicom cannot decode."
    if decoder.is_available:
        return None
    options = []
    for line in decoder.missing_dependencies:  # "gdcm - requires gdcm>=3.0.10", "pylibjpeg - requires a and b"
        needs = line.split(" - requires ", 1)[-1].split(" and ")
        pkgs = [re.split(r"[<>=!~ ]", n.strip(), maxsplit=1)[0] for n in needs]
        pkgs = [_PIP_NAMES.get(p, p) for p in pkgs if p and p != "numpy"]
        if pkgs:
            options.append(" with ".join(pkgs))
    hint = f"; install {' or '.join(options)} to read it" if options else ""
    return f"{name} is compressed as {syntax.name}, which no installed DICOM decoder reads{hint}."


def check_dicom(path: str | os.PathLike) -> str | None:
    """Why a DICOM file cannot be read (header and decoder check only, no decoding), or None if it can."""
    path = Path(path)
    try:
        ds = _open(path, header_only=True)
    except ImageError as e:
        return str(e)
    return _decoder_problem(ds, path.name)


def read_dicom(path: str | os.PathLike) -> DicomImage:
    """Read a DICOM file as the image a viewer shows (see the module notes for the steps).

    Returns
    -------
    DicomImage
        ``data`` (H, W) / (F, H, W) float32 in [0, 1] for grayscale, RGB for colour; ``spacing``
        (row, column) mm or None; de-identified ``metadata``.

    Raises
    ------
    ImageError
        Not DICOM, no image in it, a compression no installed decoder reads, or damaged pixel data;
        one sentence.
    """
    path = Path(path)
    ds = _open(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageError(f"{path.name} holds no pixel data.")
    problem = _decoder_problem(ds, path.name)
    if problem:
        raise ImageError(problem)
    try:
        stored = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - a damaged or truncated file
        raise ImageError(f"The pixel data of {path.name} could not be decoded ({type(e).__name__}: "
                         f"{_first_line(e)}).") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    meta = describe(ds)
    if photometric in _COLOUR or int(ds.get("SamplesPerPixel", 1)) > 1:
        data = _colour(stored, ds, photometric)
        meta.update(colour=True, voi="none (a colour image)", inverted=False)
    else:
        try:
            data, voi = to_display(stored, ds)
        except (ValueError, NotImplementedError, KeyError, IndexError, TypeError) as e:
            raise ImageError(f"The grey levels of {path.name} could not be mapped ({_first_line(e)}).") from None
        meta.update(colour=False, **voi)
    spacing, source = pixel_spacing(ds)
    meta.update(spacing_mm=list(spacing) if spacing else None, spacing_source=source)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return DicomImage(data, spacing, meta, frames)


def read_dicom_image(path: str | os.PathLike) -> np.ndarray:
    """One 2D image from a DICOM file: (H, W) float32 in [0, 1], or (H, W, 3) RGB; refuses several frames."""
    image = read_dicom(path)
    if image.frames > 1:
        raise ImageError(f"{Path(path).name} holds {image.frames} frames; a classifier reads one 2D image "
                         "(open the file in napari to see the frames).")
    return image.data


# ----------------------------------------------------------------------------- grey levels
def to_display(stored: np.ndarray, ds: "Dataset") -> tuple[np.ndarray, dict[str, Any]]:
    """Stored grayscale values -> displayed values: modality LUT, the first VOI, [0, 1], MONOCHROME1 inverted.

    Parameters
    ----------
    stored : np.ndarray
        The decoded pixel values, (H, W) or (F, H, W), integer (or float for float pixel data).
    ds : pydicom Dataset
        Its header.

    Returns
    -------
    (np.ndarray, dict)
        float32 in [0, 1] of the same shape, and ``voi`` / ``window`` / ``inverted`` for the metadata.
    """
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(stored, ds)
    out, lo, hi, info = _apply_first_voi(values, ds)
    unit = np.asarray(out, dtype=np.float64)
    if hi != lo:
        unit = (unit - lo) / (hi - lo)
    else:
        unit = np.zeros_like(unit)
    unit = np.clip(unit, 0.0, 1.0).astype(np.float32)
    inverted = str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"
    if inverted:
        np.subtract(np.float32(1.0), unit, out=unit)
    info["inverted"] = inverted
    return unit, info


def _apply_first_voi(values: np.ndarray, ds: "Dataset") -> tuple[np.ndarray, float, float, dict[str, Any]]:
    """(VOI output, its lowest and highest possible value, metadata) for the first VOI LUT or window."""
    from pydicom.pixels import apply_voi_lut

    luts = ds.get("VOILUTSequence") or []
    if luts and "LUTDescriptor" in luts[0] and "LUTData" in luts[0]:
        return _apply_voi_lut_table(values, ds, luts)
    centre, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if centre is not None and width is not None:
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        try:
            out = apply_voi_lut(np.asarray(values, dtype=np.float64), ds, index=0, prefer_lut=False)
            lo, hi = _window_output_range(ds)
        except ValueError as e:  # e.g. a width below 1: show the image's own range instead
            return _own_range(values, f"the image's own range (the window in the file is invalid: {_first_line(e)})")
        n = len(ds.WindowCenter) if ds["WindowCenter"].VM > 1 else 1
        explanation = ds.get("WindowCenterWidthExplanation") or ""
        if not isinstance(explanation, str):
            explanation = explanation[0] if len(explanation) else ""
        window = {"center": centre, "width": width, "function": function, "of": n,
                  "explanation": str(explanation).strip()}
        text = f"window centre {centre:g}, width {width:g} ({function}" + (f", 1 of {n})" if n > 1 else ")")
        return out, lo, hi, {"voi": text, "window": window}
    return _own_range(values, "the image's own range (no VOI LUT or window in the file)")


def _apply_voi_lut_table(values: np.ndarray, ds: "Dataset", luts) -> tuple[np.ndarray, float, float, dict[str, Any]]:
    """The first VOI LUT of the sequence, looked up here: pydicom's ``apply_voi`` indexes with the LUT's
    output dtype, which wraps around for an 8-bit LUT of more than 256 entries."""
    item = luts[0]
    entries, first_mapped, declared = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    table = _lut_entries(item, ds)[:entries]
    # values past the LUT's ends take its first / last entry; the LUT is indexed by integers (PS3.3 C.11.2.1.1)
    index = np.clip(np.rint(values) - first_mapped, 0, len(table) - 1).astype(np.intp)
    bits = _lut_bits(declared, int(table.max()))
    explanation = str(item.get("LUTExplanation", "")).strip()
    window = {"lut": 1, "of": len(luts), "entries": entries, "first_mapped": first_mapped, "bits": bits,
              "explanation": explanation}
    text = f"VOI LUT 1 of {len(luts)}" + (f" ({explanation})" if explanation else "")
    return table[index], 0.0, float(2**bits - 1), {"voi": text, "window": window}


def _lut_entries(item: "Dataset", ds: "Dataset") -> np.ndarray:
    """The LUT Data of a LUT item as an int64 array (US/SS lists, or OW bytes in the file's byte order)."""
    data = item.LUTData
    if isinstance(data, bytes):
        little = getattr(ds, "original_encoding", (None, True))[1] is not False
        return np.frombuffer(data, dtype="<u2" if little else ">u2").astype(np.int64)
    data = [data] if isinstance(data, int) else data
    table = np.asarray(list(data), dtype=np.int64)
    if table.size == 0:
        raise ValueError("the VOI LUT has no entries")
    return table


def _own_range(values: np.ndarray, text: str) -> tuple[np.ndarray, float, float, dict[str, Any]]:
    finite = np.asarray(values)[np.isfinite(values)] if np.issubdtype(np.asarray(values).dtype, np.floating) \
        else np.asarray(values)
    if finite.size == 0:
        raise ImageError("The DICOM image has no finite pixel values.")
    lo, hi = float(finite.min()), float(finite.max())
    return values, lo, hi, {"voi": text, "window": {"min": lo, "max": hi}}


def _first(value) -> float | None:
    """The first number of a (possibly multi-valued) DS/IS element, or None."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        value = value[0] if len(value) else None
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _lut_bits(declared: int, largest_entry: int) -> int:
    """Output bits of a VOI LUT: the declared depth, or fewer when every entry fits (a 12-bit LUT declared 16)."""
    return min(declared, max(8, largest_entry.bit_length()))


def _window_output_range(ds: "Dataset") -> tuple[float, float]:
    """(y_min, y_max) that pydicom's windowing maps values below / above the window to."""
    from pydicom.pixels import apply_voi_lut

    probe = np.array([-1e300, 1e300], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        lo, hi = apply_voi_lut(probe, ds, index=0, prefer_lut=False)
    return float(lo), float(hi)


def _colour(stored: np.ndarray, ds: "Dataset", photometric: str) -> np.ndarray:
    """RGB (…, 3) of a colour image (pydicom already converts YBR to RGB; palettes are looked up)."""
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        return np.asarray(apply_color_lut(stored, ds))
    return np.asarray(stored)


# ----------------------------------------------------------------------------- geometry and metadata
def pixel_spacing(ds: "Dataset") -> tuple[tuple[float, float] | None, str | None]:
    """((row, column) spacing in mm, the tag it came from): Pixel Spacing, else Imager Pixel Spacing."""
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(tag)
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if all(math.isfinite(v) and v > 0 for v in (row, col)):
            return (row, col), tag
    return None, None


def _plain(value) -> Any:
    """A JSON-friendly copy of a pydicom element value (numbers, strings, lists of them)."""
    from pydicom.uid import UID

    if isinstance(value, UID):
        return value.name
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def describe(ds: "Dataset") -> dict[str, Any]:
    """De-identified metadata: the :data:`KEPT_TAGS` present and the transfer syntax; nothing else."""
    tags = {}
    for keyword in KEPT_TAGS:
        if keyword in ds and ds[keyword].value not in (None, ""):
            tags[keyword] = _plain(ds[keyword].value)
    syntax = ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in ds.file_meta else None
    return {"dicom": tags, "transfer_syntax": syntax.name if syntax else None}

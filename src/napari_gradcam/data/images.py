"""Reading image files: any format Pillow or tifffile reads, DICOM dispatch, orientation, size checks.

* :func:`read_image` decodes one 2D image file as (H, W) or (H, W, 3|4), keeping its dtype, after checking
  the size its header declares (:func:`declared_image`) against ``preprocess.MAX_PIXELS`` and
  ``resources.DECODE_MEMORY_SHARE`` of the memory available.
* :func:`open_image_lazy` opens a TIFF too large to decode whole as a zarr array read on demand.
* :func:`is_image_file`, :func:`image_extent`, :func:`typical_source_size` look at names and headers only.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import ImageError, shown

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".pbm", ".jp2",
     ".dcm", ".dicom"}
)


def is_image_file(path: str | Path) -> bool:
    """True for a known image suffix, and for DICOM files of any name (the DICM preamble; reads 132 bytes)."""
    from ..dicom import has_dicm_preamble

    return Path(path).suffix.lower() in IMAGE_SUFFIXES or has_dicm_preamble(path)


def _is_dicom(path: Path) -> bool:
    """DICOM by suffix, or by the DICM preamble when the suffix is not another image type's."""
    from ..dicom import DICOM_SUFFIXES, has_dicm_preamble

    suffix = path.suffix.lower()
    return suffix in DICOM_SUFFIXES or (suffix not in IMAGE_SUFFIXES and has_dicm_preamble(path))
_TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class DeclaredImage:
    """What an image file's header says, read without decoding a pixel.

    shape : the array shape decoding would give (TIFF: its first series; Pillow: (H, W[, bands]))
    dtype : its element type
    height, width : the 2D image's size (the shape with channels removed)
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    height: int
    width: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.float64)) * self.dtype.itemsize

    @property
    def pixels(self) -> int:
        return self.height * self.width


@contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """tifffile logs odd headers (a shape that does not fit its pages) as warnings on stderr; the
    caller says what matters in one sentence instead."""
    import logging

    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


@contextmanager
def _pil_open(path: Path):
    """``PIL.Image.open`` without Pillow's DecompressionBombWarning on stderr: the declared size is
    checked by :func:`_check_declared` (against ``preprocess.MAX_PIXELS`` and the memory available),
    and beyond twice Pillow's own limit ``Image.open`` raises DecompressionBombError, which the callers
    turn into one sentence."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(path)
    with im:
        yield im


#: EXIF / TIFF Orientation (tag 274) -> how the stored (H, W[, C]) array becomes the upright image
#: (the same transforms as ``PIL.ImageOps.exif_transpose``).
_ORIENTATION = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def _tiff_orientation(tf) -> int:
    """The Orientation tag (274) of a TIFF's first page; 1 (upright) when absent or odd."""
    tag = tf.pages[0].tags.get(274)
    try:
        value = int(tag.value) if tag is not None else 1
    except (TypeError, ValueError):
        return 1
    return value if value in _ORIENTATION else 1


def _image_hw(name: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """(H, W) of a decoded shape: (H, W), (H, W, 1..4) or planar (3|4, H, W); ImageError otherwise."""
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4):
        return shape[1], shape[2]
    if len(shape) == 3 and shape[-1] in (1, 2, 3, 4):
        return shape[0], shape[1]
    raise ImageError(f"{name} is not a single 2D image (shape {tuple(int(n) for n in shape)}).")


def _pil_declared(name: str, im) -> DeclaredImage:
    w, h = im.size
    bands = len(im.getbands())
    if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        bands = 4 if "A" in im.mode or "transparency" in im.info else 3
    dtype = {"I;16": np.uint16, "I;16B": np.uint16, "I;16L": np.uint16, "I": np.int32, "F": np.float32}.get(
        im.mode, np.uint8)
    shape = (h, w) if bands == 1 else (h, w, bands)
    return DeclaredImage(shape, np.dtype(dtype), h, w)


def _check_declared(path: Path, decl: DeclaredImage) -> None:
    """ImageError when the declared image is too large to decode whole (pixel count, or memory)."""
    from ..preprocess import MAX_PIXELS
    from ..resources import DECODE_MEMORY_SHARE, available_memory, format_bytes

    name = shown(path.name)
    lazy = ("; use napari-gradcam tile (tiled_heatmaps), which reads a large TIFF lazily"
            if path.suffix.lower() in _TIFF_SUFFIXES else "; convert it to a TIFF and use tiled heatmaps")
    if decl.pixels > MAX_PIXELS:
        raise ImageError(f"{name} declares {decl.height} x {decl.width} pixels, more than the "
                         f"{MAX_PIXELS / 1e6:.0f} million an image may have to be read whole{lazy}.")
    budget = DECODE_MEMORY_SHARE * available_memory()
    if decl.nbytes > budget:
        raise ImageError(f"{name} declares {decl.height} x {decl.width} pixels ({format_bytes(decl.nbytes)} "
                         f"decoded), more than this machine can decode now ({format_bytes(budget)}){lazy}.")


def _declared(path: Path) -> DeclaredImage:
    """DeclaredImage from the header; the decoder's own exception on a broken file, ImageError for a
    file that is not one 2D image."""
    name = shown(path.name)
    if path.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        with _quiet_tifffile(), tifffile.TiffFile(path) as tf:
            if not tf.series:
                raise ImageError(f"{name} is a TIFF without images.")
            shape, dtype = tuple(int(n) for n in tf.series[0].shape), np.dtype(tf.series[0].dtype)
        h, w = _image_hw(name, shape)
        return DeclaredImage(shape, dtype, h, w)
    with _pil_open(path) as im:
        return _pil_declared(name, im)


def declared_image(path: str | Path) -> DeclaredImage:
    """The shape and dtype an image file declares, from its header only (no pixel is decoded).

    Raises
    ------
    ImageError
        The file cannot be read as an image, or is not one 2D image (a stack, a volume); one sentence.
    """
    path = Path(path)
    try:
        return _declared(path)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - any header failure is a user-file problem
        raise ImageError(f"{shown(path.name)} could not be read as an image ({type(e).__name__}: {e}).") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read one 2D image file as (H, W) or (H, W, 3|4), keeping its dtype.

    TIFFs go through tifffile (any dtype, including float), DICOM (``.dcm``, ``.dicom`` or any
    file with the DICM preamble) through :func:`napari_gradcam.dicom.read_dicom_image` (float32 in
    [0, 1] after the modality LUT, the first VOI LUT or window, and MONOCHROME1 inversion), everything
    else through Pillow.  Palette, 1-bit and two-channel (gray + alpha) images are converted to
    grayscale or RGB.  An EXIF (JPEG, PNG, WebP) or TIFF Orientation is applied, so the image is upright
    as a viewer shows it.
    The header is read first: a stack, or an image whose declared size is beyond
    ``preprocess.MAX_PIXELS`` pixels or :data:`napari_gradcam.resources.DECODE_MEMORY_SHARE` of the available
    memory, is refused before a pixel is decoded (a small file may declare 10^10 pixels).

    Raises
    ------
    ImageError
        The file is missing, not an image, not a single 2D image, or too large; one sentence.
    """
    path = Path(path)
    name = shown(path.name)
    if not path.is_file():
        raise ImageError(f"No image file at {shown(path)}.")
    if _is_dicom(path):
        from ..dicom import read_dicom_image

        return read_dicom_image(path)
    try:
        decode = _decode_tiff if path.suffix.lower() in _TIFF_SUFFIXES else _decode_pil
        arr, orientation = decode(path, name)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is a user-file problem
        raise ImageError(f"{name} could not be read as an image ({type(e).__name__}: {e}).") from None
    return _upright_2d(arr, orientation, name)


def _decode_tiff(path: Path, name: str) -> tuple[np.ndarray, int]:
    """(the first series as stored, its Orientation tag), after the declared size was checked."""
    import tifffile

    with _quiet_tifffile(), tifffile.TiffFile(path) as tf:
        if not tf.series:
            raise ImageError(f"{name} is a TIFF without images.")
        shape = tuple(int(n) for n in tf.series[0].shape)
        h, w = _image_hw(name, shape)
        _check_declared(path, DeclaredImage(shape, np.dtype(tf.series[0].dtype), h, w))
        return np.asarray(tf.asarray()), _tiff_orientation(tf)


def _decode_pil(path: Path, name: str) -> tuple[np.ndarray, int]:
    """(the image through Pillow, upright by its EXIF; palette and colour models as RGB(A), LA and 1-bit as L,
    1), after the declared size was checked."""
    from PIL import ImageOps

    with _pil_open(path) as im:
        _check_declared(path, _pil_declared(name, im))
        if im.getexif().get(274, 1) not in (1, None):  # upright, as a photo viewer shows it
            im = ImageOps.exif_transpose(im)
        if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
        elif im.mode in ("LA", "1"):
            im = im.convert("L")
        return np.asarray(im), 1


def _upright_2d(arr: np.ndarray, orientation: int, name: str) -> np.ndarray:
    """A decoded array as (H, W) or (H, W, 3|4): planar RGB moved last, the TIFF Orientation applied, a gray +
    alpha or single channel dropped to (H, W); ImageError for anything else."""
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar RGB TIFF
    if orientation != 1:  # a TIFF's Orientation tag: upright, as a viewer shows it
        arr = np.ascontiguousarray(_ORIENTATION[orientation](arr))
    if arr.ndim == 3 and arr.shape[-1] == 2:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise ImageError(f"{name} is not a single 2D image (shape {arr.shape}).")
    return arr


def open_image_lazy(path: str | Path):
    """A large TIFF as an array read on demand (a zarr view of its first series), or the whole image
    from :func:`read_image` when it fits.  For :func:`napari_gradcam.engine.tiled_heatmaps`.

    Raises ImageError for a large non-TIFF image, or when zarr (needed to read TIFFs lazily) is missing.
    """
    path = Path(path)
    try:
        return read_image(path)
    except ImageError:
        if path.suffix.lower() not in _TIFF_SUFFIXES or not path.is_file():
            raise
        decl = declared_image(path)  # a stack or a broken file: its own sentence
        if decl.pixels <= 0 or len(decl.shape) != 2 and not (len(decl.shape) == 3 and decl.shape[-1] in (3, 4)):
            raise
    try:
        import tifffile
        import zarr
    except ImportError:
        raise ImageError(f"{shown(path.name)} is too large to read whole, and reading it lazily needs the "
                         "zarr package (pip install zarr).") from None
    try:
        with _quiet_tifffile():
            return zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    except Exception as e:  # noqa: BLE001
        raise ImageError(f"{shown(path.name)} could not be opened lazily ({type(e).__name__}: {e}).") from None


def _quick_check(path: Path) -> str | None:
    """None if the file looks like a readable image of a size that can be decoded (header only),
    else the reason."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        if _is_dicom(path):
            from ..dicom import check_dicom

            return check_dicom(path)
        _check_declared(path, _declared(path))
        return None
    except ImageError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"


def image_extent(path: Path) -> int | None:
    """max(height, width) of an image file in pixels, from its header only; None if it cannot be read."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as t:
                shape = tuple(t.pages[0].shape)
            planar = len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4)
            return int(max(shape[1:] if planar else shape[:2]))
        with _pil_open(path) as im:
            return int(max(im.size))
    except Exception:  # noqa: BLE001 - an unreadable file has no size
        return None


def typical_source_size(paths: Sequence[Path], limit: int = 400) -> int | None:
    """Median of max(height, width) in pixels over ``paths`` (at most ``limit`` of them, evenly spaced).

    Headers only, so it costs milliseconds even for large images.  None when no file can be read.
    """
    if not len(paths):
        return None
    pick = np.unique(np.linspace(0, len(paths) - 1, min(limit, len(paths))).round().astype(int))
    sizes = [s for s in (image_extent(Path(paths[i])) for i in pick) if s is not None]
    return int(np.median(sizes)) if sizes else None

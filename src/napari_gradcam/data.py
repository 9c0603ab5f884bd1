"""Data folders for training and evaluation: scanning, patient-grouped splits, a cached Dataset.

A data set is a folder of class subfolders::

    DATA_DIR/NORMAL/IM-0115-0001.jpeg
    DATA_DIR/PNEUMONIA/person1_bacteria_1.jpeg
    ...

(any image format Pillow or tifffile reads, any size, grayscale or RGB; nested folders and symbolic
links inside a class folder are fine; hidden files and ``__MACOSX`` folders are ignored), or a CSV of ``path,label[,group]`` rows (paths relative to the CSV's folder).

* :func:`scan_folder` lists the images (cheaply checking that each one can be opened) and returns an
  :class:`ImageFolderData`; files that cannot be read are *skipped and listed*, never fatal.
* :func:`split_indices` / :meth:`ImageFolderData.split` make a deterministic train/validation
  split that is stratified by class and grouped by patient, so that no patient is on both sides.
  The group of a file comes from a regular expression on its file name (``PATIENT_PATTERN``
  recognises the Kermany pneumonia set's ``person123_...`` and ``IM-0115-...`` names); files
  that do not match are their own group.
* :class:`Augmentation` changes training images without changing their statistics (borders filled
  from the image itself, intensity changes centred on the image's own level).
* :class:`ImageDataset` turns items into network inputs through exactly the preprocessing used for
  inference (:func:`napari_gradcam.preprocess.image_to_tensor`), caches the decoded, resized
  images in memory as uint8 when they fit, and applies augmentation to the unit-range tensor.
"""

from __future__ import annotations

import csv as _csv
import errno
import math
import os
import re
import stat
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from .errors import DatasetError, GradCamWarning, ImageError, shown

if TYPE_CHECKING:  # pragma: no cover
    import torch

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".pbm", ".jp2",
     ".dcm", ".dicom"}
)
#: Folders that never hold images of their own (macOS archives' resource forks); ignored like hidden ``.*`` entries.
IGNORED_FOLDERS = frozenset({"__MACOSX"})
#: Patient id in the Kermany chest X-ray file names: ``person1234_bacteria_...`` (pneumonia),
#: ``IM-0115-0001`` and ``NORMAL2-IM-0383-0001`` (normal: the first number is the patient).
PATIENT_PATTERN = r"(person\d+|(?:NORMAL2-)?IM-\d+)"
#: Fewest images (and groups) per class that a train/validation split accepts.
MIN_PER_CLASS = 2
#: How :func:`split_indices` splits, as stored in training checkpoints (``split_method``); a checkpoint
#: without it was split by :func:`split_indices_v1` and resumes with that split.
SPLIT_METHOD = "group-shuffle-per-class"
#: Decoded images are cached in memory up to this many bytes (uint8, at the network's input size).
CACHE_LIMIT_BYTES = 2 << 30


def demo_model_path() -> Path:
    """Path of the small demo model shipped with the package (simple_cnn, normal/pneumonia/covid phantoms)."""
    from .shipped import DEMO_MODEL, shipped_file

    return shipped_file(DEMO_MODEL)


# ----------------------------------------------------------------------------- reading images
def is_image_file(path: str | Path) -> bool:
    """True for a known image suffix, and for DICOM files of any name (the DICM preamble; reads 132 bytes)."""
    from .dicom import has_dicm_preamble

    return Path(path).suffix.lower() in IMAGE_SUFFIXES or has_dicm_preamble(path)


def _is_dicom(path: Path) -> bool:
    """DICOM by suffix, or by the DICM preamble when the suffix is not another image type's."""
    from .dicom import DICOM_SUFFIXES, has_dicm_preamble

    suffix = path.suffix.lower()
    return suffix in DICOM_SUFFIXES or (suffix not in IMAGE_SUFFIXES and has_dicm_preamble(path))
#: Decoding an image may take at most this share of the memory available (the pixels are then
#: scaled to a float32 copy, and a batch holds several images).
DECODE_MEMORY_SHARE = 0.25
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
    from .preprocess import MAX_PIXELS
    from .resources import available_memory, format_bytes

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
    ``preprocess.MAX_PIXELS`` pixels or :data:`DECODE_MEMORY_SHARE` of the available memory, is
    refused before a pixel is decoded (a small file may declare 10^10 pixels).

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
        from .dicom import read_dicom_image

        return read_dicom_image(path)
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            import tifffile

            with _quiet_tifffile(), tifffile.TiffFile(path) as tf:
                if not tf.series:
                    raise ImageError(f"{name} is a TIFF without images.")
                shape = tuple(int(n) for n in tf.series[0].shape)
                h, w = _image_hw(name, shape)
                _check_declared(path, DeclaredImage(shape, np.dtype(tf.series[0].dtype), h, w))
                arr, orientation = np.asarray(tf.asarray()), _tiff_orientation(tf)
        else:
            from PIL import ImageOps

            with _pil_open(path) as im:
                _check_declared(path, _pil_declared(name, im))
                if im.getexif().get(274, 1) not in (1, None):  # upright, as a photo viewer shows it
                    im = ImageOps.exif_transpose(im)
                orientation = 1
                if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                elif im.mode == "LA":
                    im = im.convert("L")
                elif im.mode == "1":
                    im = im.convert("L")
                arr = np.asarray(im)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is a user-file problem
        raise ImageError(f"{name} could not be read as an image ({type(e).__name__}: {e}).") from None
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
            from .dicom import check_dicom

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


# ----------------------------------------------------------------------------- the data set listing
@dataclass(frozen=True)
class Item:
    """One image of a data set: its file, class index and patient/group id."""

    path: Path
    label: int
    group: str


@dataclass
class ImageFolderData:
    """The images of a data folder (or CSV) with their classes and groups.

    Attributes
    ----------
    root : Path
        The data folder (or the CSV's folder).
    classes : list[str]
        Class names; ``Item.label`` indexes this list.
    items : list[Item]
        The readable images, sorted by class then path (a stable order for reproducible splits).
    skipped : list[tuple[Path, str]]
        Files that were not used, with the reason (unreadable, unknown suffix, unknown class, broken
        or looping link, a second path to an image already listed).
    unreadable_classes : dict[str, list[tuple[Path, str]]]
        Classes that have image files but not one readable image: their files and the reasons.
    notes : list[str]
        What a user should know about the listing (a CSV naming files many times, or files outside
        the data folder); also issued as :class:`~napari_gradcam.errors.GradCamWarning`.
    """

    root: Path
    classes: list[str]
    items: list[Item]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    unreadable_classes: dict[str, list[tuple[Path, str]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def paths(self) -> list[Path]:
        return [it.path for it in self.items]

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 class indices."""
        return np.array([it.label for it in self.items], dtype=np.int64)

    @property
    def groups(self) -> list[str]:
        return [it.group for it in self.items]

    def class_counts(self) -> dict[str, int]:
        """Images per class, in class order."""
        counts = np.bincount(self.labels, minlength=len(self.classes)) if self.items else [0] * len(self.classes)
        return {c: int(n) for c, n in zip(self.classes, counts)}

    def subset(self, indices: Sequence[int]) -> "ImageFolderData":
        """The items at ``indices`` (same classes, no skipped list or notes)."""
        return replace(self, items=[self.items[int(i)] for i in indices], skipped=[], unreadable_classes={}, notes=[])

    def split(self, val_fraction: float = 0.2, seed: int = 0,
              method: str = SPLIT_METHOD) -> tuple["ImageFolderData", "ImageFolderData"]:
        """(train, validation): stratified by class, grouped by patient; see :func:`split_indices`
        (``method="v1"``: :func:`split_indices_v1`, the split of older checkpoints)."""
        splitter = split_indices_v1 if method == "v1" else split_indices
        tr, va = splitter(self.labels, self.groups, val_fraction, seed, self.classes)
        return self.subset(tr), self.subset(va)

    def check_trainable(self, min_per_class: int = MIN_PER_CLASS) -> None:
        """Raise one-sentence DatasetError unless there are >= 2 classes with >= ``min_per_class`` images each
        and every class folder with image files has a readable one."""
        where = f" in {self.root}" if self.root else ""
        bad = [f for files in self.unreadable_classes.values() for f in files]
        if not self.items:
            if bad:
                raise DatasetError(
                    f"None of the {len(bad)} image file(s){where} could be read (e.g. {bad[0][0].name}: {bad[0][1]})."
                )
            raise DatasetError(f"No readable images were found{where}; expected one subfolder of images per class.")
        for c, files in self.unreadable_classes.items():
            raise DatasetError(
                f"None of the {len(files)} image file(s) of class {c!r} could be read "
                f"(e.g. {files[0][0].name}: {files[0][1]}); replace or remove them."
            )
        counts = self.class_counts()
        present = [c for c, n in counts.items() if n > 0]
        if len(present) < 2:
            raise DatasetError(
                f"Only one class ({present[0]!r}) was found{where}; a classifier needs at least two class subfolders."
            )
        few = {c: n for c, n in counts.items() if n < min_per_class}
        if few:
            c, n = next(iter(few.items()))
            raise DatasetError(
                f"Class {c!r} has only {n} image(s); at least {min_per_class} per class are needed "
                "to train and validate."
            )


def group_of(path: Path, pattern: "str | re.Pattern | None") -> str:
    """Patient/group id of a file: the regex's first capture group (or whole match) on the file name, else the
    stem (the whole name when the suffix is no image type's, e.g. DICOM files named by UID: ``1.2.840.5.17``)."""
    own = path.stem if path.suffix.lower() in IMAGE_SUFFIXES else path.name
    if pattern is None:
        return own
    rx = compile_pattern(pattern) if isinstance(pattern, str) else pattern
    m = rx.search(path.name)
    if m is None:
        return own
    return m.group(1) if rx.groups else m.group(0)


def _resolve_pattern(group_pattern: "str | None") -> "re.Pattern | None":
    if group_pattern is None or str(group_pattern).lower() in ("", "none", "file"):
        return None
    if str(group_pattern).lower() == "auto":
        group_pattern = PATIENT_PATTERN
    return compile_pattern(group_pattern)


#: A group with a quantifier inside, itself quantified: ``(a+)+``, ``(a|aa)*``, ``(x*y?){2,}``: the shapes
#: that make a backtracking matcher take exponential time (refused when RE2 is not installed).
_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*(?:[+*?}]|\|)(?:[^()\\]|\\.)*\)[+*{]")


def compile_pattern(pattern: str, what: str = "The grouping pattern"):
    """A user's regular expression compiled so that matching it cannot hang: with RE2 (``google-re2``,
    linear time in the text, so ``(a+)+$`` on a long name takes microseconds), else with Python's ``re``
    after refusing nested quantifiers.  The result has ``search`` (its match's ``group``) and ``groups``.

    Raises
    ------
    DatasetError
        Not a valid expression, or one the linear-time matcher cannot run (backreferences,
        look-arounds); one sentence naming ``what``.
    """
    pattern = str(pattern)
    try:
        import re2
    except ImportError:  # pragma: no cover - google-re2 is a dependency; a time-safe subset of re otherwise
        re2 = None
    if re2 is not None:
        options = re2.Options()
        options.log_errors = False  # the sentence below says it; RE2 would also log to stderr
        try:
            return re2.compile(pattern, options)
        except re2.error as e:
            why = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
            raise DatasetError(f"{what} {pattern!r} is not a regular expression the linear-time matcher (RE2) "
                               f"accepts ({why}; backreferences and look-arounds are not supported).") from None
    if _NESTED_QUANTIFIER.search(pattern):
        raise DatasetError(f"{what} {pattern!r} repeats a group that itself repeats (like (a+)+), which can take "
                           "hours to match; write it without the nesting.")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise DatasetError(f"{what} {pattern!r} is not a valid regular expression ({e}).") from None


def _link_problem(err: OSError) -> str:
    """Why a symbolic link cannot be followed, from the error of ``os.stat``."""
    if err.errno == errno.ELOOP:
        return "a symbolic link loop"
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return "a broken link (its target does not exist)"
    return f"a link that cannot be followed ({err.strerror or type(err).__name__})"


def _encloses(outer: str, inner: str) -> bool:
    """Whether real path ``outer`` is ``inner`` or one of its parent folders."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def walk_files(folder: str | Path) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """Every regular file under ``folder`` once, following symbolic links without looping.

    Returns ``(files, passed_over)``.  ``files`` are ``(path, real path)`` pairs sorted by path, one per
    real file (a path without links wins over a link to the same file).  ``passed_over`` lists, with
    the reason, broken and looping links, links to an enclosing folder, folders that cannot be read,
    second paths to a file or folder already listed, and special files (pipes, devices).  Hidden
    entries (``.*``) and ``__MACOSX`` folders are ignored.
    """
    found: dict[str, Path] = {}  # real path -> the path it is listed under
    passed: list[tuple[Path, str]] = []
    seen_dirs: dict[str, Path] = {}
    dir_links: list[tuple[Path, tuple[str, ...]]] = []  # (link, real paths of the folders it was reached through)
    file_links: list[Path] = []

    def walk(top: Path, chain: tuple[str, ...]) -> None:
        stack = [(top, chain)]
        while stack:
            d, chain = stack.pop()
            real = chain[-1]
            if real in seen_dirs:
                passed.append((d, f"the same folder as {seen_dirs[real]}, listed once"))
                continue
            seen_dirs[real] = d
            try:
                with os.scandir(d) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                passed.append((d, f"the folder could not be read ({e.strerror or type(e).__name__})"))
                continue
            subdirs = []
            for e in entries:
                if e.name.startswith("."):
                    continue
                p = d / e.name
                if e.is_symlink():
                    try:
                        mode = os.stat(p).st_mode
                    except OSError as err:
                        passed.append((p, _link_problem(err)))
                        continue
                    if stat.S_ISDIR(mode):
                        if e.name not in IGNORED_FOLDERS:
                            dir_links.append((p, chain))
                    elif stat.S_ISREG(mode):
                        file_links.append(p)
                    else:
                        passed.append((p, "not a regular file (a pipe, socket or device)"))
                elif e.is_dir(follow_symlinks=False):
                    if e.name not in IGNORED_FOLDERS:
                        subdirs.append((p, (*chain, os.path.join(real, e.name))))
                elif e.is_file(follow_symlinks=False):
                    found[os.path.join(real, e.name)] = p
                else:
                    passed.append((p, "not a regular file (a pipe, socket or device)"))
            stack.extend(reversed(subdirs))

    folder = Path(folder)
    walk(folder, (os.path.realpath(folder),))
    for link, chain in dir_links:  # grows while linked folders are walked; each real folder once
        target = os.path.realpath(link)
        if any(_encloses(target, c) for c in chain):
            passed.append((link, "a link to an enclosing folder (a loop), not followed"))
        else:
            walk(link, (*chain, target))
    for link in file_links:
        real = os.path.realpath(link)
        if real in found:
            passed.append((link, f"the same file as {found[real]}, listed once"))
        else:
            found[real] = link
    files = sorted(((p, r) for r, p in found.items()), key=lambda pr: str(pr[0]))
    return files, passed


def _class_folders(root: Path, skipped: list[tuple[Path, str]]) -> tuple[dict[str, Path], list[Path]]:
    """(real path -> class folder, loose image files) of a data folder.

    Links that loop back to the data folder or repeat a class folder are added to ``skipped``.
    """
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: (e.is_symlink(), e.name))  # folders before links to them
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise DatasetError(f"The data folder {root} could not be read ({why}).") from None
    root_real = os.path.realpath(root)
    folders: dict[str, Path] = {}
    loose: list[Path] = []
    for e in entries:
        if e.name.startswith(".") or e.name in IGNORED_FOLDERS:
            continue
        p = root / e.name
        try:
            mode = os.stat(p).st_mode
        except OSError as err:
            skipped.append((p, _link_problem(err)))
            continue
        if stat.S_ISDIR(mode):
            real = os.path.realpath(p)
            if _encloses(real, root_real):
                skipped.append((p, "a link to the data folder itself (a loop), not a class"))
            elif real in folders:
                skipped.append((p, f"the same folder as {folders[real].name}, not a class of its own"))
            else:
                folders[real] = p
        elif stat.S_ISREG(mode) and is_image_file(p):
            loose.append(p)
    return dict(sorted(folders.items(), key=lambda kv: kv[1].name)), sorted(loose)


def _folder_entries(root: Path, skipped: list[tuple[Path, str]]) -> list[tuple[Path, str, None]]:
    """(path, class, None) of every file in the class folders of ``root``, each real file in one class only."""
    folders, loose = _class_folders(root, skipped)
    if loose and not folders:
        raise DatasetError(
            f"{root} holds images directly; put them in one subfolder per class (e.g. {root}/NORMAL, {root}/PNEUMONIA)."
        )
    skipped += [(p, "not in a class subfolder") for p in loose]
    listed: list[tuple[Path, str, str]] = []
    classes_of: dict[str, list[tuple[Path, str]]] = {}
    for d in folders.values():
        files, passed = walk_files(d)
        skipped += passed
        for p, real in files:
            listed.append((p, d.name, real))
            classes_of.setdefault(real, []).append((p, d.name))
    entries = []
    for p, label, real in listed:
        where = classes_of[real]
        if len(where) > 1:
            owners = {folders[r].name for r in folders if _encloses(r, real)}
            if len(owners) == 1 and label in owners:
                pass  # the class whose folder really holds the file keeps it
            elif len(owners) == 1:
                owner = next(iter(owners))
                first = next(q for q, c in where if c == owner)
                skipped.append((p, f"a link to {first}, an image of class {owner!r}"))
                continue
            else:
                names = sorted({c for _, c in where})
                listing = ", ".join(map(repr, names))
                skipped.append((p, f"the same file is in classes {listing}, so its class is ambiguous"))
                continue
        entries.append((p, label, None))
    return entries


def scan_folder(
    root: str | Path,
    csv: str | Path | None = None,
    group_pattern: str | None = "auto",
    classes: Sequence[str] | None = None,
    check: bool = True,
) -> ImageFolderData:
    """List the images of a data folder (class subfolders) or of a CSV of ``path,label[,group]``.

    Parameters
    ----------
    root : path
        Folder with one subfolder per class.  With ``csv`` it is only the base for relative paths
        (pass the CSV's folder or None).
    csv : path, optional
        A CSV with columns ``path,label`` and optionally ``group`` (header row optional).
    group_pattern : str or None
        Regular expression whose first capture group, searched in the file name, is the patient/group;
        ``"auto"`` uses :data:`PATIENT_PATTERN`; None or ``"none"`` makes every file its own group.
        A CSV ``group`` column wins over the pattern.
    classes : sequence of str, optional
        Use these classes in this order (e.g. a model's classes); other subfolders/labels are skipped
        and listed. Default: every subfolder (or label) with images, sorted.
    check : bool
        Open each file's header and skip the ones that fail (fast: no decoding).

    Returns
    -------
    ImageFolderData
        Items sorted by class then path; ``skipped`` lists files not used and why.  Symbolic links
        are followed (see :func:`walk_files`): each real image counts once, in the class whose folder
        holds it; a file linked into several classes and held by none of them is skipped as ambiguous.

    Raises
    ------
    DatasetError
        The folder or CSV does not exist or cannot be read or parsed; one sentence.
    """
    rx = _resolve_pattern(group_pattern)
    skipped: list[tuple[Path, str]] = []
    notes: list[str] = []
    if csv is not None:
        csv = Path(csv)
        if not csv.is_file():
            raise DatasetError(f"No CSV file at {csv}.")
        root = Path(root) if root is not None else csv.parent
        entries = _screen_csv_rows(_read_csv(csv, root), root, skipped, notes)
    else:
        root = _check_data_folder(root)
        entries = _folder_entries(root, skipped)

    wanted = [str(c) for c in classes] if classes is not None else None
    items_raw, unreadable = _usable_entries(entries, wanted, check, rx, skipped)
    names = wanted if wanted is not None else sorted({lab for _, lab, _ in items_raw})
    index = {c: i for i, c in enumerate(names)}
    items = [Item(p, index[lab], g) for p, lab, g in items_raw]
    items.sort(key=lambda it: (it.label, str(it.path)))
    present = {lab for _, lab, _ in items_raw}
    lost = {c: unreadable[c] for c in sorted(unreadable) if c not in present}
    for note in notes:
        warnings.warn(note, GradCamWarning, stacklevel=2)
    return ImageFolderData(Path(root), list(names), items, skipped, lost, notes)


def _check_data_folder(root) -> Path:
    """``root`` as a Path, checked to be a readable folder (one sentence otherwise)."""
    if root is None:
        raise DatasetError("No data folder was given.")
    root = Path(root)
    try:
        mode = os.stat(root).st_mode
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise DatasetError(f"No data folder at {root}.") from None
        why = e.strerror or type(e).__name__
        raise DatasetError(f"The data folder {root} could not be read ({why}).") from None
    if not stat.S_ISDIR(mode):
        raise DatasetError(f"{root} is a file, not a folder of class subfolders.")
    return root


def _usable_entries(entries: list[tuple[Path, str, str | None]], wanted: list[str] | None, check: bool, rx,
                    skipped: list[tuple[Path, str]]):
    """The (path, label, group) entries that are images of a wanted class (and open, when ``check``), the
    group from the pattern ``rx`` where none was given; the others are added to ``skipped``.  Returns them
    and {label: [(path, reason)]} of the unreadable ones."""
    items_raw: list[tuple[Path, str, str]] = []
    unreadable: dict[str, list[tuple[Path, str]]] = {}
    for path, label, group in entries:
        if not is_image_file(path):
            skipped.append((path, f"not an image file type ({path.suffix or 'no suffix'})"))
            continue
        if wanted is not None and label not in wanted:
            which = wanted if len(wanted) <= 10 else f"the {len(wanted)} requested classes"
            skipped.append((path, f"class {label!r} is not one of {which}"))
            continue
        if check:
            reason = _quick_check(path) if path.exists() else "file not found"
            if reason is not None:
                skipped.append((path, reason))
                unreadable.setdefault(label, []).append((path, reason))
                continue
        items_raw.append((path, label, group if group else group_of(path, rx)))
    return items_raw, unreadable


def _screen_csv_rows(rows: list[tuple[Path, str, str | None]], base: Path, skipped: list[tuple[Path, str]],
                     notes: list[str]) -> list[tuple[Path, str, str | None]]:
    """The CSV rows to use: each file once.

    Repeated rows (also the same file under two spellings) are used once, with a note; a file listed
    with two labels is left out and listed in ``skipped`` (its class is ambiguous); rows naming files
    outside the data folder ``base`` (``../x.png``, an absolute path elsewhere) are used as given, with
    a note that says so.  Cost and messages grow with the distinct files, not the rows: a CSV of a
    million rows naming two images gives two items, two header checks and one note.
    """
    base_abs = os.path.abspath(base)
    first: dict[str, int] = {}  # normalised path -> index in kept
    kept: list[tuple[Path, str, str | None]] = []
    labels: dict[int, set[str]] = {}
    n_repeats = 0
    for path, label, group in rows:
        key = os.path.normpath(os.path.abspath(path))
        k = first.get(key)
        if k is None:
            k = first.setdefault(os.path.realpath(key), len(kept))  # a link or another spelling of a listed file
            first[key] = k
            if k == len(kept):
                kept.append((path, label, group))
                continue
        n_repeats += 1
        if kept[k][1] != label:
            labels.setdefault(k, {kept[k][1]}).add(label)
    for k, names in labels.items():
        skipped.append((kept[k][0], f"listed with labels {', '.join(map(repr, sorted(names)))}, so its class is ambiguous"))
    if n_repeats:
        notes.append(f"The CSV names {len(kept)} file(s) in {len(rows)} rows; each file was used once "
                     f"({n_repeats} repeated row(s) left out).")
    outside = [p for p, _, _ in kept if not _encloses(base_abs, os.path.normpath(os.path.abspath(p)))]
    if outside:
        notes.append(f"{len(outside)} row(s) of the CSV name files outside the data folder {base} "
                     f"(e.g. {outside[0]}); they were used as given.")
    return [row for i, row in enumerate(kept) if i not in labels]


def _read_csv(path: Path, base: Path) -> list[tuple[Path, str, str | None]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in _csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, _csv.Error) as e:
        raise DatasetError(f"The CSV {path.name} could not be read ({e}).") from None
    if not rows:
        raise DatasetError(f"The CSV {path.name} is empty; expected rows of path,label.")
    header = [c.strip().lower() for c in rows[0]]
    if "path" in header and "label" in header:
        ip, il = header.index("path"), header.index("label")
        ig = header.index("group") if "group" in header else None
        rows = rows[1:]
    else:
        ip, il, ig = 0, 1, (2 if len(rows[0]) > 2 else None)
    out = []
    for n, r in enumerate(rows, start=2):
        if len(r) <= max(ip, il):
            raise DatasetError(f"Line {n} of {path.name} has no label; expected path,label.")
        p = Path(r[ip].strip())
        out.append((p if p.is_absolute() else base / p, r[il].strip(),
                    r[ig].strip() if ig is not None and len(r) > ig and r[ig].strip() else None))
    return out


# ----------------------------------------------------------------------------- splitting
def _split_inputs(labels, groups, val_fraction, classes):
    """Checked arrays for the splitters: labels (N,) int64, group index (N,), group sizes, each group's
    majority class, and class names."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if not 0.0 < float(val_fraction) < 1.0:
        raise DatasetError(f"The validation fraction must be between 0 and 1, not {val_fraction}.")
    groups = [str(i) for i in range(n)] if groups is None else [str(g) for g in groups]
    if len(groups) != n:
        raise DatasetError("There must be one group per label.")
    names = list(classes) if classes is not None else [str(c) for c in range(int(labels.max()) + 1 if n else 0)]
    uniq, ginv = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    gsize = np.bincount(ginv, minlength=len(uniq))
    counts = np.zeros((len(uniq), max(len(names), int(labels.max()) + 1 if n else 1)), dtype=np.int64)
    np.add.at(counts, (ginv, labels), 1)
    return labels, ginv, gsize, counts.argmax(1), names


def _need_two_groups(name: str, n_groups: int) -> None:
    if n_groups < 2:
        raise DatasetError(
            f"Class {name!r} has images from only one patient/group; at least two are needed "
            "to hold some out for validation."
        )


def split_indices(
    labels: Sequence[int],
    groups: Sequence[str] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified, grouped train/validation split (scikit-learn's ``GroupShuffleSplit`` per class).

    Each group (patient) goes wholly to one side.  Groups are assigned to their majority class; within
    each class ``GroupShuffleSplit(test_size=val_fraction, random_state=seed)`` holds out that share of
    the class's groups (rounded up: at least one group; at least one group stays for training).

    Returns
    -------
    (train_idx, val_idx) : np.ndarray, np.ndarray
        Sorted int64 indices into ``labels``.
    """
    from sklearn.model_selection import GroupShuffleSplit

    labels, ginv, gsize, gclass, names = _split_inputs(labels, groups, val_fraction, classes)
    val_groups: list[np.ndarray] = []
    for c in range(int(gclass.max()) + 1 if len(gclass) else 0):
        gs = np.flatnonzero(gclass == c)
        if len(gs) == 0:
            continue
        _need_two_groups(names[c] if c < len(names) else str(c), len(gs))
        n_val = min(len(gs) - 1, max(1, math.ceil(float(val_fraction) * len(gs))))
        splitter = GroupShuffleSplit(n_splits=1, test_size=n_val, train_size=len(gs) - n_val,
                                     random_state=np.random.default_rng([seed, c]).integers(2**31))
        _, held = next(splitter.split(gs, groups=gs))
        val_groups.append(gs[held])
    is_val = np.isin(ginv, np.concatenate(val_groups) if val_groups else np.zeros(0, np.int64))
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


def split_indices_v1(
    labels: Sequence[int],
    groups: Sequence[str] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The split of checkpoints written before ``split_method`` was stored (kept so that they resume with
    their own validation images).  Within each class the groups are shuffled and taken for validation
    until they hold about ``val_fraction`` of that class's images."""
    labels, ginv, gsize, gclass, names = _split_inputs(labels, groups, val_fraction, classes)
    rng = np.random.default_rng(seed)
    val_groups: list[int] = []
    for c in range(len(names) if len(gclass) == 0 else max(len(names), int(gclass.max()) + 1)):
        gs = np.flatnonzero(gclass == c)
        n_c = int(gsize[gs].sum())
        if n_c == 0:
            continue
        _need_two_groups(names[c] if c < len(names) else str(c), len(gs))
        gs = gs[rng.permutation(len(gs))]
        target, taken = float(val_fraction) * n_c, 0
        for k, g in enumerate(gs):
            if k >= len(gs) - 1 or (taken > 0 and taken + gsize[g] / 2 > target):
                break
            val_groups.append(int(g))
            taken += int(gsize[g])
    is_val = np.isin(ginv, np.asarray(val_groups, dtype=np.int64))
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


# ----------------------------------------------------------------------------- augmentation
#: How :class:`Augmentation` fills the border that a rotation, shift or zoom uncovers.
FILLS = ("reflection", "border", "zeros")


@dataclass
class Augmentation:
    """Random geometry and intensity changes applied to unit-range image tensors during training.

    The changes keep the image statistics that the network sees at inference: the border that a
    rotation, shift or zoom-out uncovers is filled from the image itself (``fill="reflection"``, or
    ``"border"`` to repeat the edge pixels), never with zeros, and every intensity change is centred on
    the image's own level (brightness ``x * b`` and gamma ``x ** g`` with ``log b``, ``log g`` symmetric
    around 0, contrast around the image's own mean).  A zero fill makes augmented images darker than any
    real one; BatchNorm's running statistics then follow that darker distribution and the validation
    logits shift (accuracy at the majority-class rate while ROC AUC stays high).

    Chest X-ray defaults: small rotations, shifts and zoom, and no flips (a flipped chest puts the heart
    on the wrong side); set ``flips=True`` for other images.  Each image of a batch gets its own random
    parameters, applied in one batched ``affine_grid``/``grid_sample`` call on the batch's device.
    ``erase > 0`` hides random grid cells (filled with the image's mean), which makes a network look at
    all of the evidence rather than its single most telling part; class activation maps then cover
    objects better (Singh & Lee 2017, "Hide-and-Seek").
    """

    rotation: float = 7.0  # degrees, +/-
    translate: float = 0.06  # fraction of the image size, +/-
    zoom: float = 0.08  # scale in [1 - zoom, 1 + zoom]
    brightness: float = 0.15  # multiply by [1 - b, 1 + b]
    contrast: float = 0.15  # scale deviations from the image's mean by [1 - c, 1 + c]
    flips: bool = False  # random horizontal flips
    erase: float = 0.0  # "hide-and-seek": probability of hiding each cell of an erase_grid x erase_grid grid
    erase_grid: int = 4
    gamma: float = 0.0  # x ** g with log g in [-gamma, gamma]
    fill: str = "reflection"  # one of FILLS
    blur: float = 0.0  # Gaussian blur with sigma in [0, blur] pixels (another scanner's sharpness)

    def __call__(self, x: "torch.Tensor", generator: "torch.Generator | None" = None) -> "torch.Tensor":
        """Augment (C, H, W) or (N, C, H, W) float tensors in [0, 1]; returns the same shape, in [0, 1]."""
        single = x.ndim == 3
        if single:
            x = x[None]
        if self.rotation or self.translate or self.zoom or self.flips:
            x = self._geometry(x, generator)
        x = self._intensity(x, generator)
        if self.blur > 0:
            x = self._blur(x, generator)
        if self.erase > 0:
            x = self._hide(x, generator)
        return x[0] if single else x

    @staticmethod
    def _uniform(n: int, lo: float, hi: float, generator, device) -> "torch.Tensor":
        """(n,) uniform samples drawn on the CPU (reproducible on any device), moved to ``device``."""
        import torch

        return torch.rand(n, generator=generator, device="cpu").mul_(hi - lo).add_(lo).to(device)

    def _geometry(self, x: "torch.Tensor", generator) -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        if self.fill not in FILLS:
            raise ValueError(f"fill must be one of {', '.join(FILLS)}, not {self.fill!r}")
        n, dev = x.shape[0], x.device
        ang = torch.deg2rad(self._uniform(n, -self.rotation, self.rotation, generator, dev))
        scale = self._uniform(n, 1 - self.zoom, 1 + self.zoom, generator, dev)
        tx = self._uniform(n, -self.translate, self.translate, generator, dev) * 2
        ty = self._uniform(n, -self.translate, self.translate, generator, dev) * 2
        flip = torch.ones(n, device=dev)
        if self.flips:
            flip = torch.where(self._uniform(n, 0, 1, generator, dev) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
        theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=self.fill, align_corners=False)

    def _intensity(self, x: "torch.Tensor", generator) -> "torch.Tensor":
        n, dev = x.shape[0], x.device

        def factor(amount: float) -> "torch.Tensor":  # (n, 1, 1, 1) in [1 - amount, 1 + amount]
            return self._uniform(n, 1 - amount, 1 + amount, generator, dev).view(n, 1, 1, 1).to(x.dtype)

        if self.gamma:
            g = self._uniform(n, -self.gamma, self.gamma, generator, dev).exp_().view(n, 1, 1, 1).to(x.dtype)
            x = x.clamp(0.0, 1.0).pow(g)
        if self.brightness:
            x = x * factor(self.brightness)
        if self.contrast:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * factor(self.contrast) + mean
        return x.clamp(0.0, 1.0)

    def _blur(self, x: "torch.Tensor", generator) -> "torch.Tensor":
        """Each image blurred by its own Gaussian (sigma uniform in [0, blur] px; 0 leaves it as is), as one
        grouped separable convolution with reflected borders."""
        import torch
        import torch.nn.functional as F

        n, c, h, w = x.shape
        sigma = self._uniform(n, 0.0, self.blur, generator, x.device).to(x.dtype)
        r = max(1, int(round(2.5 * self.blur)))
        t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-0.5 * (t[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
        k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n * c, 2r + 1)
        y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
        y = F.conv2d(y, k[:, None, None, :], groups=n * c)
        y = F.conv2d(y, k[:, None, :, None], groups=n * c)
        return y.reshape(n, c, h, w)

    def _hide(self, x: "torch.Tensor", generator) -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        n, g = x.shape[0], max(1, int(self.erase_grid))
        keep = (torch.rand((n, 1, g, g), generator=generator, device="cpu") >= self.erase).to(x.device, x.dtype)
        keep = F.interpolate(keep, size=x.shape[-2:], mode="nearest")
        fill = x.mean(dim=(1, 2, 3), keepdim=True)
        return x * keep + fill * (1 - keep)


# ----------------------------------------------------------------------------- the torch data set
class ImageDataset:
    """Map-style data set (usable by ``torch.utils.data.DataLoader``) of (input tensor, label).

    Images are read with :func:`read_image` and turned into unit-range (C, S, S) tensors by
    :func:`napari_gradcam.preprocess.image_to_tensor` (the inference preprocessing), optionally
    augmented, then normalised with ``mean``/``std``.  With ``cache`` the decoded, resized images are
    kept in memory as uint8, so only the first pass decodes files (call :meth:`load` to fill it up
    front).  An image that fails to decode later is replaced by another image of the same class and
    recorded in :attr:`failed`.
    """

    def __init__(
        self,
        data: ImageFolderData,
        in_channels: int,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augmentation | Callable | None = None,
        cache: bool | None = None,
        normalise: bool = True,
    ) -> None:
        import torch

        self.data = data
        self.in_channels = int(in_channels)
        self.input_size = int(input_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.transform = augment
        self.normalise_output = bool(normalise)
        nbytes = len(data) * self.in_channels * self.input_size**2
        self.cache_enabled = bool(nbytes <= CACHE_LIMIT_BYTES) if cache is None else bool(cache)
        self._cache: "torch.Tensor | None" = None
        self._filled: np.ndarray | None = None
        self.failed: list[tuple[Path, str]] = []
        self.labels = data.labels

    def __len__(self) -> int:
        return len(self.data)

    def _decode(self, i: int) -> "torch.Tensor":
        """Unit-range (C, S, S) float32 tensor of item i, read from disk."""
        from .preprocess import check_image, image_to_tensor

        img = check_image(read_image(self.data.items[i].path))
        c = self.in_channels
        return image_to_tensor(img, c, self.input_size, [0.0] * c, [1.0] * c)

    def _substitute(self, i: int, err: Exception) -> int:
        path = self.data.items[i].path
        if all(p != path for p, _ in self.failed):
            self.failed.append((path, str(err)))
        same = np.flatnonzero(self.labels == self.labels[i])
        bad = {p for p, _ in self.failed}
        ok = [j for j in same if self.data.items[j].path not in bad]
        if not ok:
            raise DatasetError(f"No image of class {self.data.classes[self.labels[i]]!r} could be read.") from None
        return int(ok[(i * 7919) % len(ok)])

    def unit(self, i: int) -> "torch.Tensor":
        """Unit-range (C, S, S) float32 tensor of item i, before augmentation and normalisation."""
        import torch

        if not self.cache_enabled:
            while True:
                try:
                    return self._decode(i)
                except (ImageError, DatasetError, OSError) as e:
                    i = self._substitute(i, e)
        if self._cache is None:
            self._cache = torch.zeros((len(self), self.in_channels, self.input_size, self.input_size), dtype=torch.uint8)
            self._filled = np.zeros(len(self), dtype=bool)
        j = i
        while not self._filled[j]:
            try:
                self._cache[j] = self._decode(j).mul_(255.0).round_().to(torch.uint8)
                self._filled[j] = True
            except (ImageError, DatasetError, OSError) as e:
                j = self._substitute(j, e)
        if j != i:  # an unreadable image stands in for by another of its class from now on
            self._cache[i] = self._cache[j]
            self._filled[i] = True
        return self._cache[i].float().div_(255.0)

    def load(self, threads: int | None = None) -> Iterator[tuple[int, int]]:
        """Decode every image into the cache, yielding (done, total) every 64 images (no-op without cache).

        Decoding runs in ``threads`` threads (default: the CPU count, at most 8; Pillow and torch release
        the GIL); stopping the iteration stops after the current chunk.
        """
        import os
        from concurrent.futures import ThreadPoolExecutor

        import torch

        n = len(self)
        if not self.cache_enabled or n == 0:
            return
        self.unit(0)  # allocates the cache
        threads = threads or min(8, os.cpu_count() or 1)

        def decode(i: int):
            try:
                return self._decode(i).mul_(255.0).round_().to(torch.uint8)
            except (ImageError, DatasetError, OSError) as e:
                return e

        with ThreadPoolExecutor(max_workers=threads) as pool:
            for start in range(0, n, 64):
                todo = [i for i in range(start, min(n, start + 64)) if not self._filled[i]]
                for i, res in zip(todo, pool.map(decode, todo)):
                    if isinstance(res, Exception):
                        self.unit(i)  # records the failure and fills in a substitute of the same class
                    else:
                        self._cache[i] = res
                        self._filled[i] = True
                yield min(n, start + 64), n

    def normalise(self, x: "torch.Tensor") -> "torch.Tensor":
        return (x - self.mean) / self.std

    @property
    def fully_cached(self) -> bool:
        return self._cache is not None and bool(self._filled.all())

    def cached_batch(self, indices: Sequence[int]) -> "torch.Tensor":
        """(B, C, S, S) uint8 images from the filled cache (unit range x 255)."""
        import torch

        return self._cache[torch.as_tensor(np.asarray(indices), dtype=torch.long)]

    def __getitem__(self, i: int) -> tuple["torch.Tensor", int]:
        """(C, S, S) float32 tensor (augmented, then normalised unless ``normalise=False``) and the label."""
        x = self.unit(int(i))
        if self.transform is not None:
            x = self.transform(x)
        return (self.normalise(x) if self.normalise_output else x), int(self.labels[int(i)])

    def tensors(self) -> tuple["torch.Tensor", "torch.Tensor"]:
        """All images (no augmentation) as one normalised (N, C, S, S) float32 tensor, and (N,) labels."""
        import torch

        xs = torch.stack([self.normalise(self.unit(i)) for i in range(len(self))]) if len(self) else torch.zeros(0)
        return xs, torch.as_tensor(self.labels, dtype=torch.long)

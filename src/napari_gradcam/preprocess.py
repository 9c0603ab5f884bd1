"""Any napari image data -> the network's input tensor, and results back to the image's size.

Rules (the same for training, prediction, explanation and tiling):

* **Shape.** One image is (H, W) grayscale or (H, W, 3|4) RGB(A) (alpha dropped).
  A batch is a list of images, an (N, H, W) array or an (N, H, W, 3|4) array.
  Other channel counts, e.g. (H, W, 2), are refused with a clear error.  Shape and dtype are
  checked from metadata first, so a lazy array (dask, zarr) that is too large is never read.
* **Values.** Any dtype (bool, ints, floats). Intensities are scaled to [0, 1] by the image's
  own finite minimum and maximum (or a given ``value_range``); a constant image becomes all 0
  (bool images keep their natural range: False 0, True 1).
  NaN becomes the finite minimum, +inf the maximum, -inf the minimum; an image with no finite
  value is refused.
* **Channels.** RGB -> grayscale by luminance for 1-channel models; grayscale repeated for
  3-channel models.
* **Geometry.** The whole image is resized (bilinear, antialiased) to input_size x input_size,
  whatever its size or aspect ratio; :func:`resize_maps` maps results back to (H, W).
* Then per-channel ``(x - mean) / std``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .errors import ImageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .bundle import ModelBundle

MAX_PIXELS = 1 << 28  # ~268 Mpx: larger single images must go through tiled_heatmaps (lazily)
#: One block of a lazy image may take at most this share of the memory available (each pass reads blocks whole).
BLOCK_MEMORY_SHARE = 0.5

_LUMA = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)  # as skimage.color.rgb2gray


def check_dtype(dtype) -> np.dtype:
    """The numpy dtype of image data, or ImageError if it does not hold real numbers (or booleans)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ImageError(f"Images must hold numbers, not {dtype}.") from None
    if np.issubdtype(dt, np.complexfloating):
        raise ImageError("Complex-valued images cannot be classified; pass the magnitude (np.abs).")
    if dt.kind not in "biuf":  # bool, signed, unsigned, float (not object, str, bytes, datetime, void)
        raise ImageError(f"Images must hold numbers, not {dt}.")
    return dt


def _shape_dtype(data) -> tuple[tuple[int, ...], np.dtype] | None:
    """(shape, dtype) of an array-like WITHOUT loading it (numpy, dask, zarr, h5py...), else None."""
    if isinstance(data, np.ndarray):
        return data.shape, data.dtype
    try:
        return tuple(int(s) for s in data.shape), np.dtype(data.dtype)
    except (AttributeError, TypeError, ValueError):  # no shape/dtype, or a non-numpy dtype (e.g. torch's)
        return None


def _as_array_like(data):
    """``data`` itself if it has a numpy shape and dtype (loaded lazily later), else ``np.asarray(data)``."""
    if _shape_dtype(data) is not None:
        return data
    try:
        return np.asarray(data)
    except (ValueError, TypeError) as e:  # ragged nested lists, objects numpy cannot read
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise ImageError(f"The data cannot be read as an array of pixel values ({first}).") from None


def check_shape(shape: tuple[int, ...], max_pixels: int | None = MAX_PIXELS) -> None:
    """ImageError unless ``shape`` is one 2D image, (H, W) or (H, W, 3|4), of at most ``max_pixels``
    pixels (None: any size, for images processed lazily)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3 and shape[-1] in (3, 4):
        pass
    elif len(shape) != 2:
        if _looks_like_channels(shape):
            raise ImageError(
                f"An image of shape {shape} has {shape[-1]} channel(s); only (H, W) grayscale and (H, W, 3|4) "
                "RGB(A) images can be classified, so pick or merge channels first."
            )
        hint = "move the channel axis last for RGB(A), or " if len(shape) == 3 and shape[0] in (3, 4) else ""
        raise ImageError(
            f"Expected one 2D image, (H, W) grayscale or (H, W, 3|4) RGB(A), but got shape {shape}; "
            f"{hint}for a stack pass one slice."
        )
    if shape[0] < 1 or shape[1] < 1:
        raise ImageError(f"The image is empty (shape {shape}).")
    if max_pixels is not None and shape[0] * shape[1] > max_pixels:
        raise ImageError(
            f"An image of {shape[0]} x {shape[1]} pixels is too large to classify whole; use tiled heatmaps."
        )


def check_image(data) -> np.ndarray:
    """Validate one image and return it as a numpy array (H, W) or (H, W, 3|4); no copy if possible.

    Shape and dtype are checked BEFORE any data is loaded, so a lazy array (dask, zarr) that is too
    large, or a stack, is refused without reading it.
    """
    data = _as_array_like(data)
    shape, dtype = _shape_dtype(data)
    check_dtype(dtype)
    check_shape(shape)
    if not isinstance(data, np.ndarray):
        data = data.compute() if hasattr(data, "compute") else data
        data = np.asarray(data)
        check_dtype(data.dtype)
    return data


def _looks_like_channels(shape: tuple[int, ...]) -> bool:
    """(H, W, C) with a few channels other than 3|4, e.g. (512, 512, 2): an image, not a batch of slivers."""
    return len(shape) == 3 and shape[-1] not in (3, 4) and 1 <= shape[-1] <= 8 and shape[-1] < min(shape[:2])


class _Stack(Sequence):
    """The images of an (N, H, W[, C]) array, sliced only when asked for (a lazy stack stays unread)."""

    def __init__(self, arr) -> None:
        self._arr = arr

    def __len__(self) -> int:
        return int(self._arr.shape[0])

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self._arr[i] for i in range(*k.indices(len(self)))]
        return self._arr[k]


def batch_items(data) -> tuple[Sequence, bool]:
    """Split input into single images WITHOUT loading lazy ones; also say whether it was a batch.

    Every item's shape and dtype are checked here (from metadata); pass each to :func:`check_image`
    when it is needed, so a lazy stack is loaded one batch at a time.
    """
    if isinstance(data, (list, tuple)):
        if not data:
            raise ImageError("An empty list of images was given.")
        items = [_as_array_like(d) for d in data]
        for item in items:
            shape, dtype = _shape_dtype(item)
            check_dtype(dtype)
            check_shape(shape)
        return items, True
    arr = _as_array_like(data)
    shape, dtype = _shape_dtype(arr)
    check_dtype(dtype)
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] in (3, 4)) or _looks_like_channels(shape):
        check_shape(shape)  # one image (a refused channel count says so)
        return [arr], False
    if len(shape) == 3 or (len(shape) == 4 and shape[-1] in (3, 4)):
        if shape[0] < 1:
            raise ImageError(f"An empty batch of images was given (shape {shape}).")
        check_shape(shape[1:])
        return _Stack(arr), True
    raise ImageError(
        f"Cannot read shape {shape} as an image or a batch: expected (H, W), (H, W, 3|4), "
        "(N, H, W) or (N, H, W, 3|4)."
    )


def split_batch(data) -> tuple[list[np.ndarray], bool]:
    """Split input into a list of single images (numpy); also say whether it was a batch.

    (H, W) and (H, W, 3|4) are single images; a list/tuple, (N, H, W) or (N, H, W, 3|4) a batch.
    An (H, W, C) array with a few channels other than 3|4 (e.g. (512, 512, 2)) is read as one
    image and refused; pass a list for a batch of such thin images.
    """
    items, is_batch = batch_items(data)
    return [check_image(item) for item in items], is_batch


def value_range(arr: np.ndarray) -> tuple[float, float]:
    """(min, max) over finite values; ImageError if there is none."""
    if arr.dtype == bool:
        return 0.0, 1.0
    if np.issubdtype(arr.dtype, np.integer):
        return float(arr.min()), float(arr.max())
    finite = np.isfinite(arr)
    if finite.all():
        return float(arr.min()), float(arr.max())
    if not finite.any():
        raise ImageError("The image has no finite values (all NaN or infinite).")
    vals = arr[finite]
    return float(vals.min()), float(vals.max())


def seconds_to_scan(image) -> float:
    """Estimated seconds of one pass over a lazy (dask) image, such as the value-range scan of tiled
    heatmaps: the time to read one block (and take its range), times the number of blocks.  0 for an
    image in memory.  Reads one block."""
    import time

    if not hasattr(image, "numblocks"):
        return 0.0
    _check_block_size(image)
    n_blocks = int(np.prod(image.numblocks, dtype=np.float64))
    first = image.blocks[(0,) * image.ndim]
    start = time.perf_counter()
    block = np.asarray(first)
    if block.size:
        finite = block if block.dtype.kind in "biu" else block[np.isfinite(block)]
        if finite.size:
            finite.min(), finite.max()
    return (time.perf_counter() - start) * n_blocks


def _check_block_size(image) -> None:
    """ResourceError when one block of a lazy image (read whole by every pass) exceeds
    :data:`BLOCK_MEMORY_SHARE` of the memory available."""
    from .errors import ResourceError
    from .resources import available_memory, format_bytes

    size = tuple(int(max(c)) for c in image.chunks)
    need = int(np.prod(size, dtype=np.float64)) * np.dtype(image.dtype).itemsize
    budget = BLOCK_MEMORY_SHARE * available_memory()
    if need > budget:
        raise ResourceError(f"The image is stored in blocks of {' x '.join(map(str, size))} values "
                            f"({format_bytes(need)} each, read whole), more than can be read now "
                            f"({format_bytes(budget)}); store it with smaller chunks (e.g. dask's rechunk).")


def to_unit(arr: np.ndarray, vrange: tuple[float, float] | None = None) -> np.ndarray:
    """Scale intensities to [0, 1] float32 (see module rules); shape unchanged, alpha dropped.

    ``vrange`` (lo, hi) overrides the image's own finite range; values outside it are clipped.
    Booleans map False -> 0, True -> 1.  Any finite range works, from denormal (1e-320) to the
    whole float64 range (-1e308 .. 1e308): extreme ranges are scaled in float64 without overflow.
    """
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    lo, hi = value_range(arr) if vrange is None else vrange
    lo, hi = float(lo), float(hi)
    if not hi > lo:  # constant image (or an empty range): all zeros
        return np.zeros(arr.shape, dtype=np.float32)
    moderate = max(abs(lo), abs(hi)) < 1e30 and hi - lo > 1e-30
    # float32 holds every value of the small types; float64 data (or an extreme range) is scaled in float64
    work = np.float32 if moderate and arr.dtype.itemsize <= 8 and arr.dtype != np.float64 else np.float64
    out = arr.astype(work, copy=True)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(out).all():
        np.nan_to_num(out, copy=False, nan=lo, posinf=hi, neginf=lo)
    np.clip(out, work(lo), work(hi), out=out)
    if work is np.float32:
        out -= np.float32(lo)
        out *= np.float32(1.0 / (hi - lo))
    else:
        half = hi * 0.5 - lo * 0.5  # halves: hi - lo itself may overflow (1e308 - -1e308)
        if half > 0:
            out *= 0.5
            out -= lo * 0.5
            out /= half
        else:  # a denormal range: halving lost it, and nothing here can overflow
            out -= lo
            out /= hi - lo
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


def to_channels(unit: np.ndarray, in_channels: int) -> np.ndarray:
    """(H, W) or (H, W, 3) in [0,1] -> (in_channels, H, W) float32."""
    if unit.ndim == 3:
        if in_channels == 1:
            return (unit @ _LUMA)[None]
        return np.ascontiguousarray(unit.transpose(2, 0, 1))
    return np.repeat(unit[None], in_channels, axis=0) if in_channels > 1 else unit[None]


def image_to_tensor(
    image: np.ndarray,
    in_channels: int,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    vrange: tuple[float, float] | None = None,
    resize: bool = True,
) -> "torch.Tensor":
    """One validated image -> (in_channels, S, S) float32 tensor, normalised (S = input_size).

    With ``resize=False`` the image keeps its own size: (in_channels, H, W).
    """
    import torch
    import torch.nn.functional as F

    chans = torch.from_numpy(to_channels(to_unit(image, vrange), in_channels))
    if resize and tuple(chans.shape[1:]) != (input_size, input_size):
        h, w = chans.shape[1:]
        chans = F.interpolate(
            chans[None], size=(input_size, input_size), mode="bilinear", align_corners=False,
            antialias=bool(h > input_size or w > input_size),
        )[0]
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (chans - m) / s


def bundle_tensor(bundle: "ModelBundle", images: Sequence[np.ndarray], vrange=None) -> "torch.Tensor":
    """Validated images -> (N, C, S, S) float32 batch for ``bundle`` (on the CPU)."""
    import torch

    c = bundle.config
    return torch.stack([image_to_tensor(im, c.in_channels, c.input_size, c.mean, c.std, vrange) for im in images])


def resize_maps(maps: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
    """(..., h, w) float tensor -> (..., H, W) by bilinear interpolation (the inverse geometry)."""
    import torch.nn.functional as F

    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    if tuple(flat.shape[-2:]) != tuple(size):
        flat = F.interpolate(flat, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return flat.reshape(*lead, *flat.shape[-2:])

"""Results as plain data: numpy arrays (or dask arrays) and small dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np


def full_size_map(coarse: np.ndarray, image_shape: tuple[int, int], signed: bool) -> np.ndarray:
    """A coarse map upsampled to its image: (H, W) float32, bilinear with pixel centres aligned (the
    placement of :class:`Heatmap`), clipped to [0, 1] ([-1, 1] when ``signed``)."""
    import torch

    from ..preprocess import resize_maps

    low = -1.0 if signed else 0.0
    if tuple(coarse.shape) == tuple(image_shape):
        return np.clip(coarse, low, 1.0).astype(np.float32, copy=False)
    full = resize_maps(torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32)), image_shape)
    return full.clamp_(low, 1.0).numpy()


def placement(grid: tuple[int, int], image_shape: tuple[int, int]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Grid-to-image ``scale`` (sy, sx) and ``offset`` (ty, tx) of an (h, w) grid spread over an (H, W)
    image, pixel centres aligned (napari's convention): cell (i, j) lies at image pixel
    (ty + i * sy, tx + j * sx), with s = H / h and t = (s - 1) / 2."""
    scale = (image_shape[0] / grid[0], image_shape[1] / grid[1])
    return (float(scale[0]), float(scale[1])), (float((scale[0] - 1) / 2), float((scale[1] - 1) / 2))


@dataclass(init=False, eq=False)
class Heatmap:
    """One explanation of one image: a map on its layer's grid and where that grid lies on the image.

    Attributes
    ----------
    coarse : (h, w) float32 in [0, 1] (the ReLU'd map divided by its maximum), at the grid it was computed
        on: the layer's grid (several fused layers: the finest one's), the network input's grid for pixel
        attributions, the image's own pixels with ``shifts > 1`` (the shifted copies' average is
        normalised there).  Signed maps: in [-1, 1], divided by their largest absolute value.
    scale, offset : (sy, sx) and (ty, tx), the grid's placement on the image in pixels, pixel centres
        aligned (:func:`placement`): an image layer holding ``coarse`` with this scale and translate lies
        exactly over the image (napari: ``scale=scale, translate=offset`` in the image's pixel frame).
    image_shape : (H, W) of the explained image.
    data : (H, W) float32, ``coarse`` upsampled to the image (bilinear, clipped), computed on first use.
    raw : (h, w) float32, the map at the layer's resolution before normalisation
        (signed for CAM; ReLU'd for Grad-CAM and Grad-CAM++), of the unshifted input.
    max : float, the maximum of the ReLU'd raw map (0 when the map is empty).
    target, target_index : the explained class.
    score : float, the model's probability for ``target``.
    probabilities : (n_classes,) float32.
    layers : the explained layers (dotted names; empty for pixel attributions); ``layer`` joins them
        with "+" ("input" for none).
    method : the method's canonical name (see ``list_methods()``); family : its family ("cam", "attribution").
    shifts : k of the k x k sub-cell shifts averaged into the map (1: none).
    smoothing : the smoothing applied, a subset of {"aug", "eigen"}; ``smooth`` joins it ("", "aug+eigen").
    signed : the map keeps its sign: ``coarse`` and ``data`` in [-1, 1], ``raw`` signed and ``max`` its
        largest absolute value.

    For ``target`` a function of the logits, ``target`` is "custom", ``target_index`` -1 and ``score``
    the function's value for the image.  ``raw`` of fused layers is the fused map (in [0, 1]) at the
    finest layer's grid.  The first positional arguments (``data, raw, max, target, target_index, score,
    probabilities, layer, method``) are those of the earlier, full-size Heatmap.
    """

    coarse: np.ndarray
    raw: np.ndarray
    max: float
    target: str
    target_index: int
    score: float
    probabilities: np.ndarray
    layers: tuple[str, ...]
    method: str
    family: str
    shifts: int
    smoothing: frozenset
    signed: bool
    scale: tuple[float, float]
    offset: tuple[float, float]
    image_shape: tuple[int, int]

    def __init__(self, data=None, raw=None, max=0.0, target="", target_index=-1, score=0.0,  # noqa: A002
                 probabilities=None, layer=None, method="", shifts=1, smooth=None, signed=False, *,
                 coarse=None, layers=None, smoothing=None, family="cam", scale=None, offset=None,
                 image_shape=None) -> None:
        full_given = coarse is None  # the earlier form: the full-size map given
        if full_given:
            coarse = np.asarray(data, dtype=np.float32)
        self.coarse = coarse
        self.image_shape = tuple(int(n) for n in (image_shape if image_shape is not None else coarse.shape[:2]))
        default_scale, default_offset = placement(coarse.shape[:2], self.image_shape)
        self.scale = tuple(scale) if scale is not None else default_scale
        self.offset = tuple(offset) if offset is not None else default_offset
        self.raw, self.max, self.target, self.target_index, self.score = raw, max, target, target_index, score
        self.probabilities, self.method, self.family, self.shifts, self.signed = probabilities, method, family, shifts, signed
        if layers is None:
            layers = () if layer in (None, "", "input") else tuple(str(layer).split("+"))
        self.layers = tuple(layers)
        if smoothing is None:
            smoothing = frozenset(str(smooth or "").split("+")) - {""}
        self.smoothing = frozenset(smoothing)
        self._data = coarse if full_given else None

    @property
    def data(self) -> np.ndarray:
        """(H, W) float32: ``coarse`` at the image's size (:func:`full_size_map`), computed on first use."""
        if self._data is None:
            self._data = full_size_map(self.coarse, self.image_shape, self.signed)
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._data = value

    def scaled(self, factor: float) -> "Heatmap":
        """A copy whose maps (``coarse``, and ``data`` where already computed) are multiplied by ``factor``."""
        from dataclasses import replace

        f = np.float32(factor)
        out = replace(self, coarse=(np.asarray(self.coarse, dtype=np.float32) * f).astype(np.float32, copy=False))
        if self._data is not None:
            out.data = (np.asarray(self._data, dtype=np.float32) * f).astype(np.float32, copy=False)
        return out

    @property
    def layer(self) -> str:
        """The explained layers joined by "+" ("input" for a pixel attribution)."""
        return "+".join(self.layers) or "input"

    @property
    def smooth(self) -> str:
        """The smoothing as text: "", "aug", "eigen" or "aug+eigen"."""
        return "+".join(s for s in ("aug", "eigen") if s in self.smoothing)

    @property
    def title(self) -> str:
        from .methods import method_title

        return f"{method_title(self.method)} {self.target}"

    def __repr__(self) -> str:
        return (f"Heatmap({self.method} for {self.target!r} at {self.layer}, grid {tuple(self.coarse.shape)} "
                f"on image {self.image_shape}, score {self.score:.3f})")


@dataclass
class TiledHeatmaps:
    """Per-class heatmaps over a whole (large) image.

    Attributes
    ----------
    heatmaps : (C, H, W) float32 in [0, 1] (numpy, or dask for a dask input or an image too large
        for memory: see ``lazy``). Each tile contributes
        its class probability times its map divided by the tile's maximum, blended across
        overlapping tiles with a smooth window, so values are comparable across tiles and classes.
    probability_maps : (C, H, W) float32, each pixel's class probabilities from ONE tile (mode
        "tiles"): the nearest tile of the chain that covers the image with the least overlap (the
        non-overlapping grid, at every overlap; see :func:`.tiling.chain_starts`), so
        each pixel is counted once; piecewise constant (up to the blending grid's upsampling).  Not
        blended across overlapping tiles: a tile straddling a normal and an abnormal region is called
        abnormal, and a blend would let it eat the normal neighbour.  Mode "fullconv": the softmax of
        the tile-window logits at each position.
    classes : the C class names, in the order of the maps.
    class_indices : their indices in the model's classes.
    tiles : number of tiles run; tile, stride : tile size and step in pixels.
    method, mode : the method's name (``list_methods()``); "tiles" | "fullconv".
    """

    heatmaps: Any
    probability_maps: Any
    classes: list[str]
    class_indices: list[int]
    tiles: int
    tile: int
    stride: int
    method: str
    mode: str
    extra: dict = field(default_factory=dict)

    @property
    def lazy(self) -> bool:
        """True when the maps are dask arrays (computed chunk by chunk on demand)."""
        return _is_dask(self.heatmaps)

    @cached_property
    def dominant(self):
        """(H, W) int8 index into ``classes`` of the most probable class at each pixel (dask if lazy)."""
        return self.probability_maps.argmax(axis=0).astype(np.int8)

    @cached_property
    def probabilities(self) -> dict[str, float]:
        """Mean probability of each class over the image (area-weighted, from ``probability_maps``)."""
        means = self.probability_maps.mean(axis=(1, 2), dtype=np.float64)
        if self.lazy:
            means = means.compute()
        return {c: float(m) for c, m in zip(self.classes, np.asarray(means))}

    @cached_property
    def breakdown(self) -> dict[str, float]:
        """Share of the image's area where each class dominates (the argmax of ``probability_maps``,
        so in mode "tiles" each pixel as its chain tile calls it); the shares sum to 1."""
        return _shares(self._counts(), self.classes)

    def _counts(self):
        if self.lazy:
            import dask.array as da

            return da.bincount(self.dominant.ravel(), minlength=len(self.classes)).compute()
        return np.bincount(self.dominant.ravel(), minlength=len(self.classes))

    def compute(self) -> "TiledHeatmaps":
        """A numpy copy of a lazy result (loads the whole maps into memory)."""
        if not self.lazy:
            return self
        import dask

        heat, prob = dask.compute(self.heatmaps, self.probability_maps)
        return TiledHeatmaps(heat, prob, self.classes, self.class_indices, self.tiles, self.tile, self.stride,
                             self.method, self.mode, dict(self.extra))

    def to_zarr(self, path, dtype="float16") -> "TiledHeatmaps":
        """Store the heatmaps (C, H, W) in a zarr array at ``path`` and compute the breakdown and
        mean probabilities in the SAME pass, chunk by chunk (memory bounded by the chunk size).

        Returns a TiledHeatmaps whose ``heatmaps`` read lazily from the zarr store.  The store is written
        beside ``path`` and moved into place when complete (:func:`~napari_gradcam.outputs.atomic_folder`):
        a failure or an interruption leaves a previous store at ``path`` as it was.
        """
        import dask
        import dask.array as da

        from ..outputs import atomic_folder

        heat = da.asarray(self.heatmaps)
        prob = da.asarray(self.probability_maps)
        counts = da.bincount(prob.argmax(axis=0).astype(np.int8).ravel(), minlength=len(self.classes))
        means = prob.mean(axis=(1, 2), dtype=np.float64)
        computed = {}

        def write(tmp: str) -> None:
            store = heat.astype(dtype).to_zarr(tmp, overwrite=True, compute=False)
            _, computed["counts"], computed["means"] = dask.compute(store, counts, means)

        atomic_folder(path, write)
        counts, means = computed["counts"], computed["means"]
        out = TiledHeatmaps(da.from_zarr(str(path)), prob, self.classes, self.class_indices, self.tiles, self.tile,
                            self.stride, self.method, self.mode, dict(self.extra, zarr=str(path)))
        out.__dict__["breakdown"] = _shares(counts, self.classes)
        out.__dict__["probabilities"] = {c: float(m) for c, m in zip(self.classes, means)}
        return out


def _is_dask(arr) -> bool:
    return type(arr).__module__.startswith("dask")


def _shares(counts, classes: list[str]) -> dict[str, float]:
    counts = np.asarray(counts, dtype=np.float64)
    return {c: float(n / counts.sum()) for c, n in zip(classes, counts)}


@dataclass
class FeatureMaps:
    """The most active channels of one layer for one image.

    maps : (n, h, w) float32 raw activations; channels : (n,) int channel indices;
    scores : (n,) float32 mean activation of each; layer : dotted name.
    """

    maps: np.ndarray
    channels: np.ndarray
    scores: np.ndarray
    layer: str
